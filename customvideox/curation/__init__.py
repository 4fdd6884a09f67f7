"""Reference-video pair curation (paper section 5.1 and Appendix A): ``customvideox data build``.

Stage 1 :mod:`.quality` (resolution, aesthetic, motion, temporal consistency), stage 2 :mod:`.entity` (main
entity and background complexity from the caption), stage 3 :mod:`.reference` (Grounding DINO + SAM on the first
frame -> reference image, the following frames -> target clip); :mod:`.pipeline` runs them resumably with
:mod:`.manifest` files; :mod:`.pairs` reads the input table and writes/reads the pair dataset.
"""

import types as _types

from customvideox.curation.entity import (
    EntityExtractor,
    EntityJudgement,
    EntityParseError,
    EntityStage,
    LLMEntityExtractor,
    RuleEntityExtractor,
    TransformersChat,
    build_entity_stage,
    build_messages,
    parse_llm_json,
)
from customvideox.curation.manifest import DROP, KEEP, Decision, StageManifest
from customvideox.curation.models import (
    AESTHETIC,
    CLIP_L14,
    GROUNDING_DINO,
    QWEN,
    SAM,
    ModelSpec,
    check_models,
    resolve_model,
)
from customvideox.curation.pairs import (
    PAIR_COLUMNS,
    CaptionTableError,
    ClipSource,
    PairDataset,
    load_captions,
    read_pairs,
)
from customvideox.curation.pipeline import STAGES, BuildSummary, build_pairs, manifest_path
from customvideox.curation.quality import (
    AestheticMLP,
    AestheticPredictor,
    ClipWindow,
    FlowMotionScorer,
    ImageEmbedder,
    MotionScorer,
    OpenClipEmbedder,
    QualityConfig,
    QualityFilter,
    build_quality_filter,
    load_aesthetic_mlp,
    probe_video,
    raft_flow_fn,
    read_frames,
    temporal_consistency,
)
from customvideox.curation.reference import (
    Detector,
    GroundingDinoDetector,
    ReferenceConfig,
    ReferenceExtractor,
    SamSegmenter,
    Segmenter,
    build_grounded_sam,
    build_reference_extractor,
)

__all__ = sorted(n for n, v in dict(globals()).items() if not n.startswith("_") and not isinstance(v, _types.ModuleType))
