"""Exercises of chapter 7 (prediction correctness). ``exercises(...)`` builds them from this run's numbers."""

from __future__ import annotations

import torch

from segcal_lib.exercises import Exercise, choice, numeric, predicate

__all__ = ["exercises"]


def _sampler_ok(fn) -> bool:
    """The reader's sampler draws labels whose frequencies match the softmax (five standard errors)."""
    logits = torch.tensor([1.5, 0.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, 100, 100).contiguous()
    y = torch.as_tensor(fn(logits)).long().reshape(-1)
    if y.numel() != 10_000:
        return False
    freq = torch.bincount(y, minlength=3).double()[:3] / y.numel()
    p = torch.softmax(logits[0, :, 0, 0].double(), 0)
    return bool(torch.allclose(freq, p, atol=5 * (0.25 / y.numel()) ** 0.5))


def _reference_sampler(logits):
    probs = logits.softmax(1).movedim(1, -1).reshape(-1, logits.shape[1])
    return torch.multinomial(probs, 1).view(logits.shape[0], *logits.shape[2:])


def exercises(mispredicted_confidence: float, oracle_share: float) -> list[Exercise]:
    """The chapter's exercises.

    Parameters
    ----------
    mispredicted_confidence : mean confidence of the mispredicted pixels (seed 0) in this run.
    oracle_share : share of the pooled ECE the oracle removes (seed 0) in this run, as a fraction.
    """
    c = mispredicted_confidence
    return [
        Exercise(
            "ch07.mispredicted_ece",
            f"The mispredicted pixels of this run have mean confidence {c:.3f}. What is their pooled ECE?",
            numeric(c, abs_tol=1e-3, explain="On mispredicted pixels accuracy is zero in every bin."),
            "Write ECE bin by bin: |accuracy - confidence| weighted by the bin's share; what is the accuracy here?",
            f"{c:.3f}: accuracy is 0 in every bin, so ECE is the mean confidence. A perfectly calibrated model "
            "scores the same way, which is why the chapter shows the stand-in beside it.",
            right=round(c, 3), wrong=round(1 - c, 3)),
        Exercise(
            "ch07.sampler",
            "Write `sample(logits)` that draws, at every pixel of logits (N, C, H, W), a label from the softmax "
            "probabilities, and returns labels (N, H, W): the calibrated stand-in.",
            predicate(_sampler_ok, "its label frequencies do not match the softmax probabilities."),
            "Flatten the pixels to rows of probabilities and use torch.multinomial, or add Gumbel noise to the "
            "logits and take the arg-max.",
            "`torch.multinomial(logits.softmax(1).movedim(1, -1).reshape(-1, C), 1)` reshaped to (N, H, W); the "
            "library uses the Gumbel-max trick, `(logits + Gumbel noise).argmax(1)`, which draws the same "
            "distribution.",
            right=_reference_sampler, wrong=lambda logits: logits.argmax(1)),
        Exercise(
            "ch07.oracle_share",
            "What share of the pooled ECE (in percent) did the oracle remove in this run (seed 0)?",
            numeric(oracle_share * 100, abs_tol=0.5),
            "The chapter's oracle table, row 'all mispredicted', column pooled ECE.",
            f"{oracle_share:.1%}.",
            right=round(oracle_share * 100, 1), wrong=round(oracle_share * 100 + 20, 1)),
        Exercise(
            "ch07.standin_all",
            "The stand-in's labels are drawn from the model's own probabilities. Its ECE over *all* pixels is "
            "expected to be: 'zero up to sampling noise', 'the model's ECE', or 'the mispredicted pixels' ECE'?",
            choice("zero up to sampling noise", ["zero up to sampling noise", "the model's ECE",
                                                 "the mispredicted pixels' ECE"]),
            "Is a model whose labels are drawn from its own probabilities calibrated?",
            "Zero up to sampling noise: the stand-in is calibrated by construction; what remains is the small-sample "
            "bias of binning (larger for image-wise ECE, with few pixels per image and bin).",
            right="zero up to sampling noise", wrong="the model's ECE"),
    ]
