"""Student and teacher: the networks of one DINOv2 / RAD-DINO run and the loss of one step.

The teacher is an exponential moving average of the student (parameters only), built without
drop path, never trained by gradients. The DINO and iBOT centring states live in
``centering`` modules of the meta-architecture, so they are checkpointed with it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from raddino.models.dino_head import DINOHead, HeadConfig
from raddino.models.vit import VisionTransformer, ViTConfig
from raddino.ssl.config import LossSection
from raddino.ssl.losses import (
    SoftmaxCentering,
    dino_loss,
    ibot_patch_loss,
    koleo_loss,
    masked_token_weights,
    sinkhorn_knopp,
    teacher_entropy,
)


class Branch(nn.Module):
    """A backbone with its heads (``ibot_head`` is None when iBOT shares the DINO head)."""

    def __init__(
        self, backbone: VisionTransformer, head: HeadConfig, separate_ibot_head: bool
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.dino_head = DINOHead(backbone.embed_dim, head)
        self.ibot_head = DINOHead(backbone.embed_dim, head) if separate_ibot_head else None

    def forward(
        self, globals_: torch.Tensor, locals_: torch.Tensor | None, masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Student outputs: global CLS (2B, D), global logits (2B, K), local logits (L*B, K) or
        None, masked-patch logits (M, K). One call, so DDP sees one forward per step."""
        global_out = self.backbone(globals_, masks=masks)
        local_cls = self.backbone(locals_).cls if locals_ is not None else None
        cls = global_out.cls if local_cls is None else torch.cat([global_out.cls, local_cls])
        cls_logits, patch_logits = self.head_logits(cls, global_out.patches[masks])
        global_logits = cls_logits[: len(global_out.cls)]
        local_logits = cls_logits[len(global_out.cls) :] if local_cls is not None else None
        return global_out.cls, global_logits, local_logits, patch_logits

    def head_logits(
        self, cls: torch.Tensor, patches: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """CLS tokens (C, D) and patch tokens (M, D) -> their prototype logits (C, K), (M, K).

        With one shared head (DINOv2's default), one call on the rows stacked, as DINOv2 does:
        the head's normalised prototype matrix (K x bottleneck) is built, cast and
        backpropagated once per step instead of once per input.
        """
        if self.ibot_head is not None:
            return self.dino_head(cls), self.ibot_head(patches)
        return self.dino_head(torch.cat([cls, patches])).split([len(cls), len(patches)])


@dataclass
class StepOutput:
    """Losses of one step (scalars) and collapse signals (detached)."""

    total: torch.Tensor
    dino_local: torch.Tensor
    dino_global: torch.Tensor
    koleo: torch.Tensor
    ibot: torch.Tensor
    teacher_entropy: torch.Tensor
    cls_std: torch.Tensor

    def log_values(self) -> dict[str, torch.Tensor]:
        return {
            "loss": self.total.detach(),
            "dino_local": self.dino_local.detach(),
            "dino_global": self.dino_global.detach(),
            "koleo": self.koleo.detach(),
            "ibot": self.ibot.detach(),
            "teacher_entropy": self.teacher_entropy,
            "cls_std": self.cls_std,
        }


class StudentTeacher(nn.Module):
    """``student`` (trained), ``teacher`` (EMA), and the centring states."""

    def __init__(
        self,
        backbone: ViTConfig,
        head: HeadConfig,
        loss: LossSection,
        separate_ibot_head: bool = False,
    ) -> None:
        super().__init__()
        self.loss_config = loss
        self.student = Branch(VisionTransformer(backbone), head, separate_ibot_head)
        teacher_backbone = VisionTransformer(replace(backbone, drop_path_rate=0.0))
        self.teacher = Branch(teacher_backbone, head, separate_ibot_head)
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.requires_grad_(False)
        self.dino_centering = SoftmaxCentering(head.out_dim, loss.center_momentum)
        self.ibot_centering = SoftmaxCentering(head.out_dim, loss.center_momentum)

    def sync_teacher(self) -> None:
        """Teacher := student (after loading initial weights into the student)."""
        self.teacher.load_state_dict(self.student.state_dict())

    def train(self, mode: bool = True) -> StudentTeacher:
        super().train(mode)
        self.teacher.eval()
        return self

    @torch.no_grad()
    def update_teacher(self, momentum: float, student: nn.Module | None = None) -> None:
        """teacher = m * teacher + (1 - m) * student, parameters only."""
        source = list((student or self.student).parameters())
        target = list(self.teacher.parameters())
        torch._foreach_mul_(target, momentum)
        torch._foreach_add_(target, [p.detach() for p in source], alpha=1.0 - momentum)

    @torch.no_grad()
    def teacher_targets(
        self, globals_: torch.Tensor, masks: torch.Tensor, temp: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher probabilities: CLS (2B, K) with the two crops swapped, masked patches (M, K),
        and the normalised teacher CLS embeddings (2B, D)."""
        out = self.teacher.backbone(globals_)
        half = out.cls.shape[0] // 2
        cls = torch.cat([out.cls[half:], out.cls[:half]])  # student crop 1 meets teacher crop 2
        # Logits stay in the head's dtype (bf16 under autocast): the centerings read them in
        # float32 a chunk of rows at a time.
        cls_logits, patch_logits = self.teacher.head_logits(cls, out.patches[masks])
        if self.loss_config.centering == "sinkhorn_knopp":
            cls_probs = sinkhorn_knopp(cls_logits, temp)
            patch_probs = sinkhorn_knopp(patch_logits, temp, n_rows=patch_logits.shape[0])
        else:
            cls_probs = self.dino_centering.teacher_probs(cls_logits, temp)
            patch_probs = self.ibot_centering.teacher_probs(patch_logits, temp)
            self.dino_centering.update(cls_logits)
            if patch_logits.shape[0]:
                self.ibot_centering.update(patch_logits)
        return cls_probs, patch_probs, nn.functional.normalize(out.cls.float(), dim=-1)

    def forward(
        self,
        globals_: torch.Tensor,
        locals_: torch.Tensor | None,
        masks: torch.Tensor,
        teacher_temp: float,
        student: nn.Module | None = None,
    ) -> StepOutput:
        """Losses for global crops (2B, 3, S, S), local crops (L*B, 3, s, s) or None, and
        iBOT masks (2B, N) bool. ``student`` may be the DDP-wrapped student branch."""
        cfg = self.loss_config
        student = student or self.student
        cls_probs, patch_probs, teacher_cls = self.teacher_targets(globals_, masks, teacher_temp)

        global_cls, global_logits, local_logits, patch_logits = student(globals_, locals_, masks)
        batch = global_cls.shape[0] // 2
        n_local = 0 if local_logits is None else local_logits.shape[0] // batch

        n_terms = 2 * n_local + 2  # DINOv2: local x global pairs + the 2 cross-global pairs
        teacher_chunks = list(cls_probs.chunk(2))
        zero = global_logits.new_zeros(()).float()
        dino_local = (
            dino_loss(list(local_logits.chunk(n_local)), teacher_chunks, cfg.student_temp) / n_terms
            if local_logits is not None
            else zero
        )
        dino_global = dino_loss([global_logits], [cls_probs], cfg.student_temp) * 2 / n_terms
        koleo = sum(koleo_loss(chunk) for chunk in global_cls.chunk(2))
        if patch_logits.shape[0]:
            ibot = ibot_patch_loss(
                patch_logits, patch_probs, masked_token_weights(masks), 2 * batch, cfg.student_temp
            )
        else:
            ibot = zero
        total = (
            cfg.dino_weight * (dino_local + dino_global)
            + cfg.koleo_weight * koleo
            + cfg.ibot_weight * ibot
        )
        return StepOutput(
            total=total,
            dino_local=dino_local,
            dino_global=dino_global,
            koleo=koleo,
            ibot=ibot,
            teacher_entropy=teacher_entropy(cls_probs).detach(),
            cls_std=teacher_cls.std(dim=0).mean().detach(),
        )
