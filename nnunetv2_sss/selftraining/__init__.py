"""Self-training with nnU-Net pseudo-labels: pseudo-label pools (pool.py), the command that makes them
(pseudo_label.py), the student's training data (student_data.py), the rounds (self_train.py)."""
