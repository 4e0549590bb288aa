"""The embedded default data: a synthetic chest X-ray cohort rendered from one real CT.

Virtual patients (deformations of the source anatomy with hidden age, sex and BMI), findings
inserted in 3D, digitally reconstructed radiographs, projected masks and reports. For
demonstrations and tests, not for clinical conclusions.

Modules, in the order data flows through them: `source` (fetch and verify the CT), `anatomy`
(prepare it for rendering), `patient` and `findings` (draw a virtual patient), `deform` (patient
-> source map), `rays` and `sampler` (sample the anatomy along each ray), `insert` (findings in
3D), `devices` (tubes), `render` (projection and detector), `report`, `cohort` (files and
manifest), `sheet` (contact sheets).
"""

from raddino.data.synth.cohort import RENDER_VERSION, CohortSummary, SynthConfig, generate_cohort
from raddino.data.synth.findings import DEFAULT_PREVALENCE, FINDINGS
from raddino.data.synth.render import MASKS
from raddino.data.synth.sheet import contact_sheet
from raddino.data.synth.source import CtSource, SourceError, default_source

__all__ = [
    "DEFAULT_PREVALENCE",
    "FINDINGS",
    "MASKS",
    "RENDER_VERSION",
    "CohortSummary",
    "CtSource",
    "SourceError",
    "SynthConfig",
    "contact_sheet",
    "default_source",
    "generate_cohort",
]
