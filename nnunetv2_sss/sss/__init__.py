"""The SSS paper's own parts (docs/method.md section 1): DFE (``dfe``), PCSW (``pcsw``), prompts from
ground truth (``ground_truth_prompts``), and the one pseudo-label refinement "PCSW -> prompts ->
SAM-2 prompt head -> labels and confidences" (``refinement``) that the SSS trainer and
``nnUNetv2_sss_predict_refine`` (``predict_refine``) share."""
