"""Fast inference: the backbone cast, optionally compiled, with a fallback to eager.

:class:`InferenceEngine` runs a :class:`VisionTransformer` under ``torch.inference_mode`` in a
chosen dtype and one of three ways (``compile``):

- ``off``: eager PyTorch (SDPA attention, in-place activations).
- ``onednn``: the blocks' folded form (:meth:`~raddino.models.vit.Block.folded_forward`:
  LayerScale folded into the weights of ``attn.proj`` and the FFN's last linear, 1/sqrt(d)
  into the q rows of ``attn.qkv``) traced with ``torch.jit.trace`` and frozen, which makes the
  folded weights constants, then fused by oneDNN Graph (``torch.jit.enable_onednn_fusion``):
  per block a qkv linear, the attention (explicit matmuls and softmax; ``attention="sdpa"``
  traces PyTorch's flash-attention kernel instead, ``"fused"`` raddino's own kernel, which
  stays a call between the partitions), ``x + proj(...)``, fc1 with GELU and
  ``x + fc2(...)``, each one partition; LayerNorms stay aten ops. The fastest CPU mode
  measured, ahead of ``torch.compile`` and ``torch.export`` + AOTInductor (docs/encoding.md,
  "CPU fast path"), though TorchScript is deprecated upstream; where the fuser is missing (or
  on Python 3.14+, which TorchScript does not support) the engine runs eagerly. It is
  specialised per input shape and fuses from the third call with a shape on.
- ``inductor``: ``torch.compile`` with frozen weights (CPU needs a C++ compiler, CUDA Triton).

Compiled modes run a fixed batch: a partial (last) batch is padded to the first batch's size.
If tracing, compiling or a compiled call fails, or oneDNN Graph fuses nothing, the engine warns
and continues eagerly: encoding never stops because of a compiler.

Deciding which mode to use: :mod:`raddino.models.hardware`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Literal

import torch
from torch import nn

from raddino.models.hardware import onednn_graph_available, short_name
from raddino.models.vit import BackboneOutput, VisionTransformer

Runner = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]
BACKEND_NAMES = {"off": "eager", "onednn": "oneDNN Graph", "inductor": "inductor"}
ATTENTION_CHOICES = ("matmul", "sdpa", "fused")


class BackboneTuple(nn.Module):
    """The backbone as a function of images only, returning ``(cls, registers, patches, *layer
    tokens)``: what tracing, ``torch.compile`` and ``torch.export`` take."""

    def __init__(self, backbone: VisionTransformer, layers: Sequence[int]) -> None:
        super().__init__()
        self.backbone = backbone
        self.layers = tuple(layers)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.backbone(images, layers=self.layers)
        return (out.cls, out.registers, out.patches, *(out.layers[i] for i in self.layers))


class InferenceEngine:
    """A backbone ready to encode: on ``device`` in ``dtype``, eager or compiled.

    ``engine(images)`` takes normalised pixels (B, 3, H, W) on ``device`` in ``dtype`` and
    returns a :class:`BackboneOutput` whose ``layers`` holds the engine's ``layers``. The
    backbone is cast and moved in place (its parameters are otherwise left as they are); use
    one engine per backbone. ``attention``: what the ``onednn`` mode traces, ``matmul`` (fused
    by oneDNN Graph; 3-9% faster than ``sdpa`` at batch 2-8 on a Xeon with AMX, and 1.7-1.9x
    the flash kernel's attention speed on a Zen 4 EPYC), ``sdpa``, or ``fused`` (raddino's ViT
    in bf16 on CPU only: raddino's AVX512-BF16 kernel, :mod:`raddino.models.fused_attention`,
    which :func:`~raddino.models.hardware.choose_attention` picks; with ``fused`` the eager mode
    uses it too, where the others keep SDPA). ``on_event`` receives a line for each compile
    step and fallback.
    """

    def __init__(
        self,
        backbone: VisionTransformer,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        compile: str = "off",
        layers: Sequence[int] = (),
        attention: Literal["matmul", "sdpa", "fused"] = "matmul",
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        if compile not in BACKEND_NAMES:
            raise ValueError(f"compile {compile!r}: choose {', '.join(BACKEND_NAMES)}")
        if attention not in ATTENTION_CHOICES:
            raise ValueError(f"attention {attention!r}: choose {', '.join(ATTENTION_CHOICES)}")
        if attention == "fused" and (
            dtype != torch.bfloat16
            or torch.device(device).type != "cpu"
            or not isinstance(backbone, VisionTransformer)
        ):
            raise ValueError("attention 'fused' runs raddino's ViT in bf16 on CPU only")
        self.attention = attention
        self.device = torch.device(device)
        self.dtype = dtype
        self.backbone = backbone.to(device=self.device, dtype=dtype).eval()
        self.layers = tuple(backbone.resolve_layers(layers))
        self.backend = compile
        self.compile_seconds: float | None = None
        self.compile_error: str | None = None
        self._module = BackboneTuple(self.backbone, self.layers).eval()
        self._on_event = on_event or (lambda message: None)
        self._runners: dict[tuple[int, ...], Runner] = {}  # input shape -> compiled runner
        self._calls: dict[tuple[int, ...], int] = {}
        self._batch: int | None = None  # the compiled batch size (set by the first call)
        self._inductor: Runner | None = None
        if compile == "inductor":
            try:
                # Frozen weights: constants folded, mkldnn linear weights prepacked on CPU.
                self._inductor = torch.compile(
                    self._module, dynamic=False, options={"freezing": True}
                )
            except Exception as error:  # any compiler failure: continue eagerly
                self._fall_back(error, stacklevel=3)

    @property
    def compiled(self) -> bool:
        """True while a compiled mode is in use (False after a fallback to eager)."""
        return self.backend != "off"

    @property
    def mode(self) -> str:
        """E.g. ``bf16 oneDNN Graph`` or ``fp32 eager``."""
        return f"{short_name(self.dtype)} {BACKEND_NAMES[self.backend]}"

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> BackboneOutput:
        count = images.shape[0]
        tensors = self._run_compiled(images) if self.compiled else None
        if tensors is None:
            fused = self.attention == "fused"  # else eager attention is SDPA
            with self._blocks_as(folded=False, impl="fused") if fused else nullcontext():
                tensors = self._module(images)
        cls, registers, patches, *layer_tokens = (t[:count] for t in tensors)
        patch = self.backbone.patch_size
        return BackboneOutput(
            cls=cls,
            registers=registers,
            patches=patches,
            grid=(images.shape[-2] // patch, images.shape[-1] // patch),
            layers=dict(zip(self.layers, layer_tokens, strict=True)),
        )

    # ------------------------------------------------------------------ compiled paths

    def _run_compiled(self, images: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
        """Compiled outputs (padded rows included), or None after falling back to eager."""
        if self._batch is None:
            self._batch = images.shape[0]
        elif images.shape[0] < self._batch:  # a partial last batch: keep the compiled shape
            padding = images.new_zeros((self._batch - images.shape[0], *images.shape[1:]))
            images = torch.cat([images, padding])
        shape = tuple(images.shape)
        try:
            start = time.perf_counter()
            first = shape not in self._runners
            if first:
                self._runners[shape] = self._build_runner(images)
            tensors = self._runners[shape](images)
            self._calls[shape] = self._calls.get(shape, 0) + 1
            if first:
                self.compile_seconds = time.perf_counter() - start
                self._on_event(
                    f"compiled ({BACKEND_NAMES[self.backend]}) for input {list(shape)}: "
                    f"{self.compile_seconds:.1f} s with the first batch"
                )
            if self.backend == "onednn" and self._calls[shape] == 3:
                self._check_fused(images)
        except Exception as error:  # any compiler failure: continue eagerly
            self._fall_back(error, stacklevel=5)
            return None
        return tensors

    def _build_runner(self, images: torch.Tensor) -> Runner:
        if self.backend == "inductor":
            return self._inductor
        return self._trace_for_onednn(images)

    def _trace_for_onednn(self, images: torch.Tensor) -> Runner:
        """Trace the blocks' folded form (:meth:`Block.folded_forward`: every residual one
        linear + add, attention as explicit matmuls, the patterns oneDNN Graph fuses), freeze
        (which turns the folded weights into constants)."""
        if not onednn_graph_available():
            raise RuntimeError("no oneDNN Graph fuser (this torch build, or Python 3.14+)")
        torch.jit.enable_onednn_fusion(True)  # process-wide; only TorchScript graphs see it
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            # trace and freeze warn (FutureWarning) that TorchScript is deprecated; the choice of
            # this path is documented, and the tracer's own warnings are about this trace
            warnings.simplefilter("ignore")
            with self._blocks_as(folded=True, impl=self.attention):
                example = images.clone()  # a normal tensor: tracing rejects inference tensors
                traced = torch.jit.trace(self._module, example, check_trace=False)
                return torch.jit.freeze(traced)

    @contextmanager
    def _blocks_as(self, folded: bool, impl: str) -> Iterator[None]:
        """Run the blocks in their folded form and/or with another attention for a while
        (tracing, or an eager call with raddino's kernel); the model is left as it was."""
        blocks = list(self.backbone.blocks)
        for block in blocks:
            block.folded, block.attn.impl = folded, impl
        try:
            yield
        finally:
            for block in blocks:
                block.folded, block.attn.impl = False, "sdpa"

    def _check_fused(self, images: torch.Tensor) -> None:
        """After the profiling calls, the graph must hold oneDNN partitions, else go eager
        (the unfused traced graph is slower than eager SDPA)."""
        runner = self._runners[tuple(images.shape)]
        graph = str(runner.graph_for(images))
        if "oneDNNFusionGroup" not in graph:
            raise RuntimeError("oneDNN Graph fused nothing in the traced model")
        partitions = graph.count("= prim::oneDNNFusionGroup")
        self._on_event(f"oneDNN Graph fused {partitions} partitions")

    def _fall_back(self, error: Exception, stacklevel: int) -> None:
        """Give up compiling: warn (``stacklevel`` = the caller of the engine), tell
        ``on_event`` and run eagerly from now on."""
        name = BACKEND_NAMES[self.backend]
        self.backend = "off"
        self._runners.clear()
        self._inductor = None
        first_line = (str(error).strip().splitlines() or [""])[0]
        self.compile_error = f"{type(error).__name__}: {first_line}"
        message = f"compiling ({name}) failed ({self.compile_error}); continuing eagerly"
        warnings.warn(message, RuntimeWarning, stacklevel=stacklevel)
        self._on_event(message)
