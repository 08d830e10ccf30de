"""Pieces every semi-supervised trainer shares: EMA teacher, views, CutMix, dropout, losses."""
