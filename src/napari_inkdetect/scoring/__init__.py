"""How good a prediction is: F0.5 and its threshold sweep (:mod:`.metrics`), Platt calibration
of the model's probabilities (:mod:`.calibration`) and scoring a stored prediction against
labels (:mod:`.evaluation`). numpy only: no torch, no Qt."""
