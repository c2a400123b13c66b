"""The adapter shared by every Hugging Face ``transformers`` family.

A family file subclasses :class:`HFAdapter` and says only what differs: which processor class to
load, the chat template to use when a checkpoint ships none, and where the language model lives.
Prompt layout (hint, question, options as ``A. text``, an answer-format instruction) is the same
for every family so that results are comparable across models.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

from priorscope.engine.errors import ModelError
from priorscope.engine.models.base import (
    TOKEN_IMAGE,
    TOKEN_PAD,
    TOKEN_SPECIAL,
    TOKEN_TEXT,
    VLMAdapter,
)

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from torch import nn

    from priorscope.engine.data.example import Example

MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
OPEN_INSTRUCTION = "Answer the question using a single word or phrase."
# A marker that cannot occur in a real question; used to split a rendered template into pieces.
_MARK = "PRIORSCOPEMARKQQ"


def user_text(example: Example) -> str:
    """Return the user message text: hint, question, options (``A. text``) and the instruction."""
    parts = []
    if example.hint:
        parts.append(f"Hint: {example.hint}")
    parts.append(example.question)
    for label, option in zip(example.option_labels, example.options, strict=True):
        parts.append(f"{label}. {option}")
    parts.append(MC_INSTRUCTION if example.is_multiple_choice else OPEN_INSTRUCTION)
    return "\n".join(parts)


def _row_images(item: Any) -> list[Any]:
    """Return one row's images as a list: [] for None, [image], or the images of a sequence."""
    if item is None:
        return []
    if isinstance(item, (list, tuple)):
        return list(item)
    return [item]


class HFAdapter(VLMAdapter):
    """A transformers image-text-to-text model with its processor, left-padded batches."""

    family: ClassVar[str] = "generic"
    #: Jinja chat template used when the checkpoint's processor has none.
    default_chat_template: ClassVar[str | None] = None
    #: What separates the generation prompt from the answer (LLaVA's "ASSISTANT:" is followed
    #: by a space, so its answers start with a word-initial token such as "▁A").
    answer_prefix: ClassVar[str] = ""
    #: The transformers classes that load the family (by name: transformers imports lazily).
    processor_class_name: ClassVar[str] = "AutoProcessor"
    model_class_name: ClassVar[str] = "AutoModelForImageTextToText"

    def __init__(self, model: Any, processor: Any, name_or_path: str) -> None:
        self.model = model
        self.processor = processor
        self.name_or_path = name_or_path
        self.tokenizer = processor.tokenizer
        if getattr(self.tokenizer, "padding_side", "left") != "left":
            # Position -1 of every row must be the answer position.
            self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if getattr(processor, "chat_template", None) is None and self.default_chat_template:
            processor.chat_template = self.default_chat_template
        self._lm = self._find_language_model()
        self._layout: dict[str, Any] | None = None
        # A fast tokenizer refuses concurrent use ("Already borrowed") when one call changes
        # its padding settings: capture encodes the next batch on a background thread while
        # this one decodes its answers.
        self.tokenizer_lock = threading.RLock()
        self._prompt_ids: tuple[str, list[int]] | None = None  # see _answer_tokens

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def processor_class(cls) -> Any:
        """Return the processor class whose ``from_pretrained`` loads this family's processor."""
        import transformers

        return getattr(transformers, cls.processor_class_name)

    @classmethod
    def model_class(cls) -> Any:
        """Return the transformers class that loads this family's weights."""
        import transformers

        return getattr(transformers, cls.model_class_name)

    @classmethod
    def load(
        cls,
        path: str,
        *,
        device: str,
        dtype: Any,
        attn_implementation: str,
        trust_remote_code: bool,
        local_files_only: bool,
    ) -> HFAdapter:
        """Return the adapter for a checkpoint folder or a name in the Hugging Face cache."""
        common = dict(trust_remote_code=trust_remote_code, local_files_only=local_files_only)
        try:
            processor = cls.processor_class().from_pretrained(path, **common)
        except (OSError, ValueError, KeyError, TypeError) as exc:  # what transformers raises
            raise ModelError(
                f"Expected an image processor and a tokenizer for the model {path} "
                "(preprocessor_config.json or processor_config.json, and tokenizer files, beside "
                f"config.json). Got none that loads instead ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:160]}). Copy the processor files from the original "
                "checkpoint into the folder (processor.save_pretrained(folder) writes them), or "
                "pass the original checkpoint's name or folder to --model."
            ) from None
        if not hasattr(processor, "tokenizer") or not hasattr(processor, "image_processor"):
            raise ModelError(
                f"Expected a processor with a tokenizer and an image processor for {path}. Got "
                f"{type(processor).__name__} instead. Check preprocessor_config.json and "
                "processor_config.json in the checkpoint folder."
            )
        from transformers.utils import logging as hf_logging

        # The per-tensor "Loading weights" bar is noise next to priorscope's own progress.
        bar_was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            model = cls.model_class().from_pretrained(
                path,
                dtype=dtype if dtype is not None else "auto",
                attn_implementation=attn_implementation,
                **common,
            )
        finally:
            if bar_was_on:
                hf_logging.enable_progress_bar()
        model.to(device).eval()
        return cls(model, processor, path)

    # -- structure -----------------------------------------------------------------------------
    def _find_language_model(self) -> nn.Module:
        """Return the text decoder, raising ModelError naming what is missing."""
        inner = getattr(self.model, "model", None)
        for owner, attr in ((inner, "language_model"), (self.model, "language_model")):
            lm = getattr(owner, attr, None) if owner is not None else None
            if lm is not None:
                lm = getattr(lm, "model", lm)  # a *ForCausalLM wraps its decoder in .model
                break
        else:
            raise ModelError(
                f"Expected {type(self.model).__name__} to expose model.language_model (transformers "
                "5.x layout). Got no attribute 'language_model' on the model or model.model. "
                "Use a transformers 5 checkpoint class or add a family adapter for it."
            )
        for part in ("layers", "norm"):
            if not hasattr(lm, part):
                raise ModelError(
                    f"Expected the language model {type(lm).__name__} to have '.{part}'. Got "
                    f"attributes {sorted(n for n, _ in lm.named_children())} instead. Add a "
                    "family adapter for this architecture."
                )
        return lm

    @property
    def num_layers(self) -> int:
        return len(self.decoder_layers())

    @property
    def d_model(self) -> int:
        weight = cast("torch.Tensor", self.lm_head().weight)
        return int(weight.shape[1])

    def language_model(self) -> nn.Module:
        return self._lm

    def decoder_layers(self) -> nn.ModuleList:
        return self._lm.layers  # type: ignore[return-value]

    def final_norm(self) -> nn.Module:
        return self._lm.norm  # type: ignore[return-value]

    def lm_head(self) -> nn.Module:
        head = self.model.get_output_embeddings()
        if head is None:
            raise ModelError(
                f"Expected {type(self.model).__name__} to have an output embedding (lm_head). "
                "Got None. Load the *ForConditionalGeneration class, not the bare model."
            )
        return cast("nn.Module", head)

    @property
    def image_token_id(self) -> int:
        token_id = getattr(self.processor, "image_token_id", None)
        if token_id is None:
            token = getattr(self.processor, "image_token", None)
            token_id = self.tokenizer.convert_tokens_to_ids(token) if token else None
        if token_id is None:
            raise ModelError(
                f"Expected the processor of {self.name_or_path} to define image_token_id. Got "
                "none. Add a family adapter that names the image placeholder token."
            )
        return int(token_id)

    # -- prompts -------------------------------------------------------------------------------
    def _render(self, text: str, n_images: int) -> str:
        # Every image placeholder comes before the text, in the row's image order.
        content: list[dict[str, str]] = [{"type": "image"} for _ in range(int(n_images))]
        content.append({"type": "text", "text": text})
        messages = [{"role": "user", "content": content}]
        if getattr(self.processor, "chat_template", None) is None:
            raise ModelError(
                f"Expected a chat template for {self.name_or_path}. Got none in the checkpoint and "
                f"no default for family {self.family!r}. Add chat_template.jinja to the folder."
            )
        return str(
            self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        )

    def build_prompt(
        self, example: Example, *, with_image: bool = True, n_images: int | None = None
    ) -> str:
        n = (1 if with_image else 0) if n_images is None else n_images
        return self._render(user_text(example), n)

    @property
    def prompt_template(self) -> str:
        """Return the rendered template with ``{text}`` where the user text goes (provenance)."""
        return self._render(_MARK, 1).replace(_MARK, "{text}")

    def encode(
        self,
        examples: Sequence[Example],
        images: Sequence[Image.Image | Sequence[Image.Image] | None],
    ) -> dict[str, torch.Tensor]:
        if len(examples) != len(images):
            raise ModelError(
                f"Expected one image (or None) per example. Got {len(images)} images for "
                f"{len(examples)} examples."
            )
        rows = [_row_images(img) for img in images]
        with_image = [bool(row) for row in rows]
        if any(with_image) and not all(with_image):
            raise ModelError(
                "Expected a batch where every row has an image or none has. Got a mix; encode "
                "the 'none' condition as its own batch."
            )
        for ex, row in zip(examples, rows, strict=True):
            self.check_image_count(ex, len(row))
        pairs = zip(examples, rows, strict=True)
        texts = [self.build_prompt(ex, n_images=len(row)) for ex, row in pairs]
        kwargs: dict[str, Any] = dict(text=texts, return_tensors="pt", padding=True)
        if all(with_image) and images:
            # One flat list: the processor fills the placeholders of all rows in order.
            kwargs["images"] = [img for row in rows for img in row]
        with self.tokenizer_lock:
            batch = self.processor(**kwargs)
        return {k: v.to(self.device) for k, v in batch.items() if hasattr(v, "to")}

    # -- token positions -----------------------------------------------------------------------
    def _template_layout(self) -> dict[str, Any]:
        """Return token-id pieces of the template around the user text (computed once)."""
        with self.tokenizer_lock:
            return self._make_template_layout()

    def _make_template_layout(self) -> dict[str, Any]:
        if self._layout is None:
            tok = self.tokenizer
            layout: dict[str, Any] = {}
            for with_image in (False, True):
                rendered = self._render(_MARK, int(with_image))
                head, tail = rendered.split(_MARK, 1)
                if with_image:
                    head = head.split(self.processor.image_token)[-1]
                layout[f"head{int(with_image)}"] = len(
                    tok(head, add_special_tokens=False).input_ids
                )
                layout["tails"] = [
                    tok("\n" + instr + tail, add_special_tokens=False).input_ids
                    for instr in (MC_INSTRUCTION, OPEN_INSTRUCTION)
                ]
            layout["bos"] = len(tok("", add_special_tokens=True).input_ids)
            layout["special"] = set(tok.all_special_ids)
            self._layout = layout
        return self._layout

    def token_kinds(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Return TOKEN_* kinds [batch, seq]: pad, image, question text, template (special).

        Question text is the hint, question and options; the instruction, role markers and
        vision delimiters count as template. The text span is found by stripping the template's
        head and tail token counts, computed once by rendering the template around a marker.
        """
        import torch

        ids = batch["input_ids"]
        mask = batch.get("attention_mask", torch.ones_like(ids))
        layout = self._template_layout()
        kinds = torch.full(ids.shape, TOKEN_SPECIAL, dtype=torch.int8)
        kinds[mask == 0] = TOKEN_PAD
        image_id = self.image_token_id
        kinds[ids == image_id] = TOKEN_IMAGE
        done: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
        for row, (row_ids, row_mask) in enumerate(zip(ids.tolist(), mask.tolist(), strict=True)):
            key = (tuple(row_ids), tuple(row_mask))
            if key in done:  # the same prompt under another condition: the same kinds
                kinds[row] = kinds[done[key]]
                continue
            done[key] = row
            valid = [i for i, m in enumerate(row_mask) if m]
            if not valid:
                continue
            first, end = valid[0], valid[-1] + 1
            image_pos = [i for i in valid if row_ids[i] == image_id]
            if image_pos:
                start = image_pos[-1] + 1 + layout["head1"]
            else:
                start = first + layout["bos"] + layout["head0"]
            for tail in layout["tails"]:
                if len(tail) <= end - start and row_ids[end - len(tail) : end] == tail:
                    end -= len(tail)
                    break
            for i in range(start, end):
                if row_ids[i] not in layout["special"]:
                    kinds[row, i] = TOKEN_TEXT
        return kinds

    def _answer_tokens(self, candidate: str) -> list[int] | None:
        """Return the token ids a candidate adds after the generation prompt (None: it merges)."""
        tok = self.tokenizer
        if self._prompt_ids is None:  # the template and tokenizer are fixed once loaded
            prefix = self._render("x", 0)
            self._prompt_ids = (prefix, tok(prefix, add_special_tokens=False).input_ids)
        prefix, base = self._prompt_ids
        full = tok(prefix + self.answer_prefix + candidate, add_special_tokens=False).input_ids
        if full[: len(base)] == base and len(full) > len(base):
            return [int(t) for t in full[len(base) :]]
        return None

    def answer_token(self, answer: str) -> int | None:
        """Return the one token ``answer`` is after the generation prompt, else None."""
        with self.tokenizer_lock:  # the prefetch thread may be encoding the next batch
            after = self._answer_tokens(answer)
        return after[0] if after is not None and len(after) == 1 else None

    def candidate_token_ids(self, candidates: Sequence[str]) -> list[int]:
        """Return each candidate's first token id as it would follow the generation prompt."""
        tok = self.tokenizer
        out = []
        for cand in candidates:
            after = self._answer_tokens(cand)
            if after:
                out.append(after[0])
            else:
                alone = tok(cand, add_special_tokens=False).input_ids
                if not alone:
                    raise ModelError(
                        f"Expected candidate {cand!r} to tokenize to at least one token."
                    )
                out.append(int(alone[0]))
        return out

    # -- running -------------------------------------------------------------------------------
    def forward_context(self) -> contextlib.AbstractContextManager[None]:
        """Return what :meth:`generate` and :meth:`prefill` run the model inside (a family's
        speed-ups that leave every output bitwise as it is; none by default)."""
        return contextlib.nullcontext()

    def generate(self, batch: dict[str, torch.Tensor], *, max_new_tokens: int) -> list[str]:
        import torch

        with torch.no_grad(), self.forward_context():
            out = self.model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new = out[:, batch["input_ids"].shape[1] :]
        with self.tokenizer_lock:
            texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [t.strip() for t in texts]

    def prefill(self, batch: dict[str, torch.Tensor]) -> None:
        import torch

        # Only the answer position's logits, as generate's prefill asks where the model can.
        supports = getattr(self.model, "_supports_logits_to_keep", lambda: False)
        keep = {"logits_to_keep": 1} if supports() else {}
        with torch.no_grad(), self.forward_context():
            self.model(**batch, use_cache=False, **keep)

    def weights_sha256(self) -> str:
        """Return a sha256 over the checkpoint's safetensors files, or over the state dict."""
        digest = hashlib.sha256()
        folder = Path(self.name_or_path)
        files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
        if files:
            for f in files:
                digest.update(f.read_bytes())
        else:
            for name, tensor in sorted(self.model.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().float().cpu().numpy().tobytes())
        return digest.hexdigest()

    def describe(self) -> dict[str, Any]:
        improc = self.processor.image_processor
        settings = {k: v for k, v in improc.to_dict().items() if not k.startswith("_")}
        return {
            "path": str(self.name_or_path),
            "family": self.family,
            "model_class": type(self.model).__name__,
            "num_layers": self.num_layers,
            "d_model": self.d_model,
            "weights_sha256": self.weights_sha256(),
            "dtype": str(self.dtype).replace("torch.", ""),
            "attn_implementation": getattr(self.model.config, "_attn_implementation", None),
            "processor": {"class": type(self.processor).__name__, "image_processor": settings},
            "prompt_template": self.prompt_template,
            "image_token_id": self.image_token_id,
        }
