"""The adapter interface every VLM family implements.

Capture and layer replacement talk to a model only through this interface, so a new family is one
new file in this folder plus one registry line. Token kinds and the meaning of a layer index are
fixed here so that the store and every analysis agree on them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from torch import nn

    from priorscope.engine.data.example import Example

# Token kinds recorded per position (store array fullseq/kind and capture's site reductions).
TOKEN_PAD = 0
TOKEN_IMAGE = 1
TOKEN_TEXT = 2  # tokens of the question, hint and options
TOKEN_SPECIAL = 3  # template tokens: role markers, vision start/end, instruction boilerplate


class VLMAdapter(ABC):
    """A loaded VLM with what priorscope needs to know about its family.

    Layer index convention: ``-1`` is the input of decoder layer 0 (site ``embed``) and ``i`` is
    the output of decoder layer ``i`` (site ``resid.{i}``), before the final norm.
    Batches are left-padded so that position ``-1`` of every row predicts the answer.
    """

    family: ClassVar[str]
    #: The most images one prompt may hold (None: any number). Families trained on one image
    #: per conversation (LLaVA-1.5, the generic fallback) refuse rows with several.
    max_images: ClassVar[int | None] = 1

    model: Any  # transformers PreTrainedModel
    processor: Any  # transformers ProcessorMixin
    name_or_path: str

    @property
    @abstractmethod
    def num_layers(self) -> int:
        """Return the number of decoder layers of the language model."""

    @property
    @abstractmethod
    def d_model(self) -> int:
        """Return the width of the residual stream."""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @abstractmethod
    def decoder_layers(self) -> nn.ModuleList:
        """Return the language model's decoder layers, in order."""

    @abstractmethod
    def language_model(self) -> nn.Module:
        """Return the text decoder (its ``.layers``, ``.norm`` and rotary embedding live here)."""

    @abstractmethod
    def final_norm(self) -> nn.Module:
        """Return the norm applied after the last decoder layer."""

    @abstractmethod
    def lm_head(self) -> nn.Module:
        """Return the output projection from d_model to the vocabulary."""

    def vision_output(self) -> nn.Module:
        """Return the module whose output is the image tokens as the decoder receives them.

        Qwen-VL families: the vision tower's patch merger; LLaVA families: the multi-modal
        projector. A family with another layout overrides this.
        """
        from priorscope.engine.errors import ModelError

        inner = getattr(self.model, "model", self.model)
        visual = getattr(inner, "visual", None)
        for module in (
            getattr(visual, "merger", None),
            getattr(inner, "multi_modal_projector", None),
        ):
            if module is not None:
                return module
        raise ModelError(
            f"Expected {type(self.model).__name__} to have visual.merger or multi_modal_projector "
            "for the 'vision' site. Got neither. Override vision_output() in the family adapter."
        )

    def check_image_count(self, example: Example, n_images: int) -> None:
        """Raise ModelError naming the row and the family when it has too many images."""
        if self.max_images is None or n_images <= self.max_images:
            return
        from priorscope.engine.errors import ModelError

        source = example.source
        where = f", data row {source.row} of {source.path}" if source is not None else ""
        most = self.max_images
        raise ModelError(
            f"Expected at most {most} image{'s' if most > 1 else ''} per prompt for model family "
            f"{self.family!r} ({self.name_or_path}). Got {n_images} images in example "
            f"{example.id!r}{where} instead. Capture rows with several images with a family "
            "that takes them (qwen2_5_vl, qwen2_vl, llava_next), or pass --on-bad skip to "
            "skip such rows (each is counted and reported)."
        )

    @abstractmethod
    def build_prompt(
        self, example: Example, *, with_image: bool = True, n_images: int | None = None
    ) -> str:
        """Return the chat-templated prompt text, ending where the assistant's answer begins.

        ``n_images`` image placeholders come first (default: one, or none without image).
        """

    @abstractmethod
    def encode(
        self,
        examples: Sequence[Example],
        images: Sequence[Image.Image | Sequence[Image.Image] | None],
    ) -> dict[str, torch.Tensor]:
        """Return the processor's left-padded batch on the model's device.

        ``images[i]`` is the (possibly blurred) image for ``examples[i]``, a sequence of images
        for a row with several (one placeholder each, in order; a family that takes fewer
        raises ModelError naming the row), or ``None`` to ask the question with no image.
        Everything the processor returns is kept (Qwen2.5-VL silently falls back to 1-D
        positions without ``mm_token_type_ids``).
        """

    @abstractmethod
    def token_kinds(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Return an int8 tensor [batch, seq] of TOKEN_* kinds for every position."""

    @abstractmethod
    def candidate_token_ids(self, candidates: Sequence[str]) -> list[int]:
        """Return the token id that starts each candidate answer when it follows the prompt."""

    def unembed_rows(self, candidates: Sequence[str]) -> torch.Tensor:
        """Return the LM head rows [len(candidates), d_model] of the candidates' first tokens."""
        ids = self.candidate_token_ids(candidates)
        weight: torch.Tensor = self.lm_head().weight  # type: ignore[assignment]
        return weight[ids].detach()

    def answer_token(self, answer: str) -> int | None:
        """Return the token id ``answer`` is when it follows the prompt, None when it takes
        several tokens (or merges with the prompt's end).

        Only one-token answers can be read from the prefill's logits (``capture --answer-from
        candidates``). This default knows no tokenizer layout and returns None.
        """
        return None

    @abstractmethod
    def generate(self, batch: dict[str, torch.Tensor], *, max_new_tokens: int) -> list[str]:
        """Return the greedy continuation of each row, decoded without special tokens."""

    def prefill(self, batch: dict[str, torch.Tensor]) -> None:
        """Run the prompt through the model once, as the first step of :meth:`generate` does.

        The forward hooks see what they see during ``generate``'s prefill; nothing is decoded.
        """
        import torch

        with torch.no_grad():
            self.model(**batch, use_cache=False)

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Return provenance: path, family, layers, d_model, weights hash, processor settings."""
