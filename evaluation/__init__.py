"""
Evaluation: how well skyblink does, measured against something it did not produce.

- `skyblink.evaluation.truth_scoring`: a simulated night's detections and alerts against the
  simulator's truth (completeness, purity, classes), with the SEP baseline beside them.
- `skyblink.evaluation.sep_baseline`: the same difference windows run through SEP (the field's
  extraction library), the baseline of the tile program's detector.
- `skyblink.evaluation.real_folds`: real survey alerts (ZTF, Rubin) in folds grouped by night and
  survey, and ROC AUCs with their intervals.
- `skyblink.evaluation.survey_scores`: real survey alerts scored by skyblink's survey classifier
  (or the pipeline's classifier) and, for ZTF, by the braai port (`skyblink.evaluation.braai_port`)
  next to the surveys' own scores.
- `skyblink.evaluation.stamp_features`: survey-independent physical features of a triplet of
  stamps (S/N, shape against the PSF, dipoles, flux ratios), measured in the real-alert folds.

Truth scoring, the SEP baseline and the folds are driver side (no torch); scoring survey alerts
runs the models (`score_alerts` loads its runner when called; braai needs torch). The engines
never import this package: it sits above them.
"""
