"""Seconds per video for all five metrics: VideoBench's scorer against the peers' own loops, same models, same run.

The peer loop computes exactly what the published evaluation code computes, in its structure, models loaded once:

* VBench ``vbench/dynamic_degree.py`` (``DynamicDegree.infer``): per consecutive pair of kept frames, pad, run the
  whole RAFT (``RAFT.forward``, 20 updates: both images through the feature encoder, the flow upsampled after every
  update, as princeton-vl's ``core/raft.py`` does in ``test_mode``), pull the flow to numpy, score it, count;
* VGen-style CLIP/DINO (and DreamBooth's evaluation): one frame at a time through the image encoder, each
  reference embedded on its own, the cosines averaged in Python.

The scorer path is ``metric.score`` (what ``videobench score`` calls): on CPU each batch in pieces on
single-threaded workers (one per torch thread), CLIP/DINO frames batched under ``torch.inference_mode``, RAFT with
each frame encoded once (on CPU one frame per worker task), pairs batched, the GRU's context share computed once per
pair and the correlation lookup as gathered integer-aligned patches blended with four shared bilinear weights per
centroid (:mod:`videobench.metrics.raft`), one upsampling per pair; a frame or a pair repeated in a clip is computed
once (the synthetic pan has none). The script asserts both paths give the same numbers: cosines within 1e-5, every RAFT pair score within 1e-4 relative,
the same D.D decision.

Timings alternate the two paths family by family (A/B interleaved) for ``--repeats`` rounds and report medians,
with the load average before and after (``os.getloadavg``): on a shared machine compare the ratio, not seconds.
Models are random-initialised (``random_weights=True``): the timings are those of the real architectures
(open_clip ViT-B/32, DINO ViT-S/16, RAFT-large with 20 updates), the score values are meaningless. Decoding the mp4
is not included (the scorer overlaps it with compute on a worker thread).

    python benchmarks/score_throughput.py --device cuda --frames 49 --repeats 3
    python benchmarks/score_throughput.py --device cpu --frames 9 --height 128 --width 192 --repeats 3

Levers, measured one by one on the 2-core CPU at the smoke suite's size (9 frames at 128x192, 8 RAFT pairs). Seven
other jobs shared the two cores (load average 15-25), so seconds are medians of interleaved A/B rounds in one
process and only their ratio carries over; work counts are exact:

| lever | before | after | kept |
|---|---|---|---|
| RAFT: features once per frame, one upsampling per pair, pairs batched (in place before) | - | - | yes |
| RAFT: the GRU's context share once per pair, z/r hidden and z/r/q motion convolutions fused (refinement of 8 pairs, 20 updates, 3 rounds) | 161.1 s | 111.5 s | yes: 1.44x; pair scores within 2.5e-7 relative |
| RAFT: ``channels_last`` model and frames | - | not timed (the A/B was stopped under load 25) | no: pair scores move 2.5e-7 relative, no measured gain |
| cache keyed per family on the inputs it reads (dynamic: video; dino: video + references) and checked again before computing: the smoke suite's 12 cases hold 10 distinct videos | 36 metric computations, 12 RAFT passes | 32, 10 RAFT passes | yes (exact) |
| CLIP/DINO embeddings of images seen before looked up by content (a subject's reference, a clip scored against several prompts) | 120 CLIP + 120 DINO images | 93 + 93 | yes (exact) |

All levers together against the peers' loops (``--frames 5 --height 128 --width 160 --references 1 --repeats 1``,
load average 19-24, values asserted equal): clip 102.2 -> 44.7 s, dino 73.4 -> 26.0 s, dynamic 439.4 -> 150.7 s,
615.0 -> 221.4 s per video, 2.78x (one round: more rounds did not fit the shared machine's time).

Second round, on the same machine shared with other jobs (load average 1.3-4 during the runs): A/B pairs in
one process, interleaved, medians of 5 rounds (scratch timing scripts; the work counts are exact). One smoke video
is 9 frames at 128x192 (8 RAFT pairs, 20 updates); the profile (cProfile of ``videobench score`` on the smoke
results, torch.profiler of each family) put RAFT at three quarters of the scoring stage, mostly convolutions at
about two thirds of the two cores' fp32 peak (about 0.12 TFLOP/s), then CLIP, DINO and the models' seeded random
initialisation:

| lever | before | after | kept |
|---|---|---|---|
| repeated frames computed once (:func:`videobench.metrics.preprocess.distinct_images`): RAFT runs each distinct consecutive pair, CLIP/DINO embed each distinct frame; a still shot of 9 frames | RAFT 3.04 s, CLIP 0.63 s, DINO 0.63 s | 0.45 s, 0.14 s, 0.09 s | yes: the smoke suite's three still videos need 3 RAFT pairs instead of 24 and 3 frames instead of 27 per family (the main job: 59 of 80 RAFT pairs, 66 of 90 frames); pair scores bit-identical, cosines within 1.2e-7 (batch-size summation order) |
| RAFT correlation lookup with grids normalised once per pyramid (``PyramidLookup``, replaced in the third round) instead of torchvision's ``index_pyramid`` (split, 4 passes and a concatenation per level and update) | 2.86 s | 2.65 s | yes: pair scores within 2.3e-7 relative |
| RAFT GRU: ``(1 - z) h + z q`` as one ``lerp``, activations and additions in place | 2.86 s | 2.63 s | yes: pair scores within 1.9e-7 relative (both together: 2.67 s, the rounds' spread is as large as the gain) |
| RAFT ``channels_last`` (model, frames, hidden state and context) with the lookup above | 2.54 s | 2.59 s | no: no gain in the quiet rounds |
| ``torch.compile`` (inductor, ``freezing=True``) of the fused update block, smoke size | 2.78 s per video (eager) | 2.70 s; the first call (compilation) took 106 s | no: 3% per video against 106 s of compilation, which a 49-frame video (48 pairs, about 16 s eager) repays after about 130 videos on this CPU; a candidate for CUDA only |
| torch threads 1 instead of the default 2 (RAFT, 9-frame pan, load 2.4) | 5.03 s | 4.59 s | no: faster only because two other jobs shared the cores; on a quiet machine two threads use both cores |
| bf16 autocast on this CPU (AVX2, no AVX-512 BF16): 9 frames through CLIP, DINO | 1.33 s, 0.62 s | 4.41 s, 4.48 s | no (3-7x slower; CPU scoring stays fp32 by the precision contract) |
| seeded random initialisation of the metric models (the main job's ``--random-weights``) | CLIP ViT-B/32 1.5-1.9 s (``uniform_`` 0.96 s + ``normal_`` 0.47 s of 151M parameters), DINO ViT-S/16 0.9 s, RAFT 0.1 s | - | not changed: the time is the generator's draws themselves; skipping default initialisations that are overwritten afterwards would move the generator's state and so every later weight (a different random model) |
| CLIP/DINO: the 9 frames and 3 references in one forward instead of four | CLIP 1.02 s, DINO 0.94 s | 0.91 s, 0.95 s | no: 0.1 s per video on the benchmark only; in a run a subject's reference is embedded once (looked up by content), and a frame's embedding would depend on its subject's references (batch composition) |

All kept levers together (load average 1.5-1.8, two runs of the command above with ``--repeats 3``): 4.79 and
4.83 s per video against the peers' 7.01 and 7.51 s, 1.46x and 1.56x (the synthetic pan repeats no frame). The
README's main job, alternating with the tree before this round at load average 0.8-1.7: median 48.2 s of 4 runs
(scoring 28-33 s) against 54.5 s of 3 (scoring 37-50 s).

Third round (RAFT only; the same 2-core machine shared with a test suite run, load average 1.2-3).
torch.profiler of :func:`videobench.metrics.dynamic.raft_pair_flows` on the 9-frame 128x192 pan (8 pairs, 20
updates; 15.4 s profiled under load 2-3, against 2.4-2.8 s unprofiled on a quieter machine, so only the shares carry
over): feature encoder 1.54 s (10%), context encoder 0.47 s (3%), correlation pyramid build 0.05 s (0.3%), lookup
1.11 s (7%), motion encoder 3.91 s (25%), the two GRUs 6.49 s (42%), flow head 1.65 s (11%), the GRU's context
terms 0.03 s, mask predictor and upsampling 0.12 s (0.8%). Convolutions dominate (the GRU's 1x5/5x1 and the motion
encoder's and flow head's 3x3); the elementwise passes (sigmoid, tanh, ReLU, additions, lerp) take 5-7 ms each
under load, about 15% together, because each parallel operator waits for the second, busy, core. The larger size,
17 frames at 256x320 (16 pairs, with :class:`videobench.metrics.raft.PatchLookup`, 23.8 s profiled at load average
1.0-1.3): feature encoder 3.96 s (17%; its instance norm 0.39 s), context encoder 2.92 s (12%), pyramid build
0.31 s, lookup 0.74 s (3%), motion encoder 5.69 s (24%; its 3x3 256 -> 192 convolution alone 2.68 s), GRUs 6.96 s
(29%), flow head 2.07 s (9%), context terms 0.22 s, mask predictor and upsampling 0.26 s.

| lever | before | after | kept |
|---|---|---|---|
| RAFT correlation lookup as one ``index_select`` of integer-aligned ``(2r + 2)^2`` patches (every level's zero-padded volume in one buffer) and two ``lerp`` with each centroid's shared bilinear weights (:class:`videobench.metrics.raft.PatchLookup`) instead of ``PyramidLookup``'s ``grid_sample`` | lookup alone, 20 calls: 0.104-0.118 s (8 pairs at 128x192), 1.04-1.11 s (16 pairs at 256x320); whole RAFT pass, medians of interleaved rounds: 2.70 s (6 rounds), 21.0 s (2 rounds) | 0.078-0.081 s, 0.66-0.67 s; 2.65 s, 20.0 s | yes: pair scores within 1.4e-7 (128x192) and 3.0e-7 (256x320) relative; 2-5% of a RAFT pass, at the rounds' noise |
| first version of the above: one ``gather`` per level of a flattened ``(2r + 2)^2`` index | lookup 16 pairs at 256x320, 5 calls (profiled, ``PyramidLookup``): 0.31-0.46 s | 0.25-0.29 s (int64 index building and ~10 small operators per level) | replaced by the single-buffer ``index_select`` (0.16 s) |
| flow head's last convolution (3x3, 256 -> 2 channels, 2.7% of the profile; oneDNN is slow with 2 output channels) as one GEMM of the 9 taps (18 x 256) followed by 9 shifted additions | 1.6-2.0 ms per call (8 pairs at 128x192) | 0.45-0.5 ms, max difference 1.6e-6 of the output scale; at 16 pairs of 256x320 slower under load (convolution 25-48 ms, taps 99-104 ms) | no: at most 1% of a RAFT pass at the smoke size, slower at 256x320 |

Where 2x would have to come from, as the third round left it (``--count-flops``: FlopCounterMode over both paths,
then GFLOP/s over the timed seconds). At the smoke size the scorer did 509.9 GFLOP per video against the peers'
642.3 (CLIP 76.5 and DINO 101.8 on both paths: the same images through the same encoders; RAFT 331.5 against
463.9), a FLOP ratio of 1.26x; at 17 frames of 256x320, 2501.9 against 3395.7 GFLOP, 1.36x. The measured speed-ups
(1.47-1.53x and 1.36x) were that ratio times the scorer's better efficiency (112.6 against 96.7 GFLOP/s at the smoke
size), and this CPU's fp32 matrix product peaks at 162 GFLOP/s: 2x needed fewer FLOPs with the same values.

Fourth round: fewer FLOPs. The same 2-core machine, now slower and noisier than in the third round (the same RAFT
pass took 2.6-4.0 s from one hour to the next), so every lever was timed A/B in one process, interleaved:

| lever | before | after | kept |
|---|---|---|---|
| RAFT's refinement convolutions with at least 128 x 64 channels (motion encoder 3x3, flow head 3x3, the GRU's 1x5 / 5x1 hidden and motion parts) as Winograd F(4x4, 3x3) / F(1x4, 1x5) (:mod:`videobench.metrics.winograd`; 4x and 2.5x fewer multiplications), first version: NCHW, tiles gathered per channel, one Kronecker-product transform | RAFT pass (8 pairs at 128x192) 3.18 s | 2.68 s | replaced by the next |
| the same channels-last: tiles gathered as runs of channels, the refinement's tensors (hidden state, context terms, flow, correlation features) channels-last | 2.77 s | 2.27 s | yes: pair scores within 3e-7 relative of direct convolutions |
| Winograd buffers kept between calls (fresh multi-megabyte buffers fault their pages in on every call; ``MALLOC_MMAP_THRESHOLD_`` showed it: 2.37 -> 2.15 s) | 2.61 s (direct) | 2.08 s | yes |
| 2x2 or 6x6 output tiles instead of 4x4 (``benchmarks/conv_algorithms.py``) | 256 -> 192 3x3: 11.6 ms | 14.0 / 12.5 ms (errors 3e-7 / 1e-5 of the output scale against 6e-6) | no |
| NNPACK's Winograd (``torch._nnpack_spatial_convolution``) | 256 -> 192 3x3: 23.6 ms, 1x5 128 -> 384: 20.6 ms (oneDNN) | 19.3 ms, 27.6 ms | no |
| the GRU's hidden and motion parts summed in the Winograd domain: one output transform per gate, the context terms added by the output's layout pass | 2.07 s | 1.95 s (5 rounds) | yes |
| input tiles transformed one axis at a time instead of by their Kronecker product | 1.70 ms a transform (256 channels, 8 pairs) | 1.26 ms | yes |
| refinement in chunks of at most 4096 flow pixels (the features still encoded once per frame) | 16 pairs at 256x320: 13.75 s | 12.7-12.9 s (4 rounds) | yes (the smoke size is one chunk) |
| correlation volumes stored transposed, so that the lookup's channels-last output is a view | one copy of the features per update | none | yes |
| RAFT's encoders channels-last (instance norm as ``var_mean``) | feature encoder 0.364 s (9 frames at 128x192), 3.14 s (17 at 256x320) | 0.419 s, 3.40 s | no |
| the encoders' 64-channel 3x3 convolutions as Winograd | 30.8 ms (9 frames at 128x192) | 31.8 ms | no (faster only at 256x320: 314 -> 243 ms) |
| CLIP/DINO: a case's references, any sizes, resized one by one and encoded in one batch | three forwards of one image | one of three | yes (the benchmark embeds them for every video; in a run a subject's references are embedded once) |
| CLIP's text tower over the prompt's tokens up to its end-of-text token (causal attention: the padding never reaches it) | 77 positions | 11-20 | yes |
| the ViTs' last block for the class token only (:mod:`videobench.metrics.class_token`: its queries, projection and MLP; keys and values still of every token) | - | 7-8% fewer FLOPs in the image towers | yes |

All kept levers together, ``--repeats 5 --count-flops`` at the smoke size, five runs at load average 0.9-2: 1.89x,
1.97x, 1.99x, 2.01x and 2.16x (for example 3.69 s per video against 7.32 s; CLIP 0.85 against 1.63 s, DINO 0.82
against 1.09 s, RAFT 2.01 against 4.59 s); the scorer now does 303.7 GFLOP per video against 642.3, a FLOP ratio of
2.12x (CLIP 67.8 against 76.5, DINO 94.8 against 101.8, RAFT 141.0 against 463.9). At 17 frames of 256x320
(``--repeats 2``): 1.91x and 1.81x (17.9 s against 34.1 s), 1208.8 against 3395.7 GFLOP (2.81x); there the
scorer's RAFT reaches only 56-60 GFLOP/s against the peers' 94-100: its encoders (a third of what is left) run at the
peers' rate, and its refinement's tile transforms are passes over memory larger than the caches.

Fifth round: both cores without the joins. The same 2-core machine, slower again (the peers' loop took 7.3 s per
smoke video in the fourth round and 11.1 s now), so every lever was timed A/B in one process, interleaved. PyTorch
splits each operator over both cores and joins them again; RAFT's refinement runs about 40 operators per update on
tensors of a few megabytes. A single-threaded matrix product reaches 50-68 GFLOP/s here (``torch.mm``, 450-2000
rows), and the ViTs spend 80-86% of their time in ``addmm``/``mm``: they are at the machine's rate already.

| lever | before | after | kept |
|---|---|---|---|
| the batch's pieces on persistent threads with one intra-op thread each (:mod:`videobench.metrics.workers`, one per torch thread): RAFT's frames to encode and pairs to refine, medians of interleaved rounds | RAFT pass, 8 pairs at 128x192: 2.56 s (5 rounds); 16 pairs at 256x320: 18.2 s (3 rounds) | 2.28 s; 15.4 s | yes: flows within 1.6e-6 of their largest value |
| the same for CLIP's and DINO's image towers (17 images at 224) | CLIP 1.74 s, DINO 1.63 s | 1.57 s, 1.56 s | yes: embeddings within 6e-7 |
| RAFT's encoders channels-last, batch norms folded into the convolutions, instance norms as per-sample batch norms (:func:`videobench.metrics.raft.channels_last_encoder`; one thread: oneDNN's 64-channel 3x3 at 128x160 takes 266 ms channels-last against 377 ms NCHW) | 17 frames at 256x320 on two workers: feature encoder 3.75 s, context encoder 2.50 s (5 rounds) | 2.81 s, 2.02 s | yes: outputs within 2.6e-6 of the largest flow |
| instance norm of a channels-last tensor (9 x 64 x 128 x 160, one thread) | ``F.instance_norm`` on NCHW 74 ms; on channels-last it copies to NCHW and back | ``var_mean`` 140 ms, one batch norm per sample 62 ms | the per-sample batch norm |
| Winograd F(4x4, 3x3) / F(6x6, 3x3) for the encoders' 3x3 convolutions at one thread (9 frames) | 64 channels at 128x160: 266 ms (direct, channels-last); 96 at 64x80: 131 ms; 128 at 32x40: 44 ms | 328 / 356 ms; 105 / 109 ms; 36 / 38 ms | no: slower where the encoders spend their time (64 channels), a few percent of them elsewhere |
| flow pixels per refinement piece (:data:`videobench.metrics.dynamic.REFINE_POSITIONS`) with the workers: 1280, 2560, 4096, 8192 (16 pairs at 256x320, 3 rounds) | 4096: 15.9 s | 15.8, 15.2, 15.6 s | 4096 kept: the four are within the rounds' spread |

The CLIP/DINO workers measured again inside ``metric.score`` (7 interleaved rounds): CLIP 1.31 -> 1.22 s and DINO
1.25 -> 1.21 s per smoke video, CLIP 2.03 -> 1.89 s and DINO 2.13 -> 1.88 s at 17 frames of 256x320. All kept levers
together (``--count-flops``; the FLOP counts are the fourth round's, the work is the same): at 17 frames of 256x320
2.04x (``--repeats 2``, workers only: 22.0 s per video against 44.8 s), 1.94x (``--repeats 2``: 21.6 against 42.0 s)
and 2.13x (``--repeats 3``: 20.6 against 43.9 s; CLIP 2.11 against 3.67 s, DINO 2.03 against 2.91 s, RAFT 16.5
against 37.3 s); at the smoke size 1.94x (workers only, ``--repeats 5``: 5.70 against 11.08 s) and 1.98x
(``--repeats 5``: 5.07 against 10.02 s; CLIP 1.29 against 2.15 s, DINO 1.16 against 1.47 s, RAFT 2.62 against
6.40 s). The README's main job moved within this machine's noise: its scoring stage took 33-36 s with the workers,
with RAFT's only and with none (``-M <family>.cpu_workers=1``), two alternating rounds each: its 12 videos are small
and four of them still.

Sixth round: RAFT's encoders. A quieter day on the same 2-core machine (the peers' loop took 6.5 s per smoke video,
against 7.3 s in the fourth round and 10-11 s in the fifth); levers timed A/B, interleaved in one process. One
refinement update of 3 pairs at 256x320 on one thread takes about 120 ms: motion encoder 45, each GRU 28, flow head
14, lookup 6; the Winograd products run at about 82 GFLOP/s (this core's matrix-product rate), and the tile transforms
around them, passes over memory, take about 40 ms of the 120.

| lever | before | after | kept |
|---|---|---|---|
| RAFT's encoders one frame per worker task (:func:`videobench.metrics.dynamic.encode_frames`; the context encoder beside the feature encoder, no longer inside each refinement piece): both encoders, 17 frames at 256x320, two workers, 5 rounds | 2.95 s (a batch per worker) | 2.29 s | yes: a frame's activations stay in the caches (one thread, 9 frames, feature encoder: 1.61 s batched, 1.21 s frame by frame) |
| their stride-1 3x3 convolutions (64, 96 and 128 channels) as Winograd F(4x4, 3x3) (:data:`videobench.metrics.raft.WINOGRAD_MIN_CHANNEL_PRODUCT` lowered to 64 x 64), whole forward passes sharing one set of buffers per thread and geometry (:func:`videobench.metrics.winograd.shared_workspace`) | 2.29 s | 2.05 s | yes: encoder outputs within 7.4e-6 of their largest value; one thread, one frame: 64 channels 17.0 -> 13.5 ms, 96: 8.7 -> 5.8 ms, 128: 3.9 -> 2.0 ms |
| the same Winograd encoders on a batch per worker | 2.95 s | 4.27 s | no: a batch's buffers (about 60 MB a frame at 64 channels) leave the caches |
| both together, the whole RAFT pass (16 pairs at 256x320, two workers, 4 interleaved rounds) | 10.73 s | 10.21 s | yes: flows within 2.8e-6 of their largest value |
| Winograd F(1x8, 1x5) for the GRU's 1x5 / 5x1 convolutions (11 interpolation points; 1.5 instead of 2 products per output) | 128 -> 384 1x5, 3 pairs: 12.8 ms, error 2.4e-6 of the output scale | 10.1 ms, error 4.2e-5 | no: 17x the rounding error for a fifth of the GRU's convolution time |

All kept levers together (``--repeats 3``; the same day before this round in brackets): at 17 frames of 256x320
2.14x, 13.11 s per video against 28.09 s (2.13x, 13.75 against 29.31 s; CLIP 1.51 against 2.29 s, DINO 1.30 against
1.65 s, RAFT 10.30 against 24.16 s), in two more runs 2.28x (12.82 against 29.26 s) and 2.10x (14.80 against
31.02 s, a slower hour); at 9 frames of 240x320 2.19x (6.29 against 13.79 s) and 2.12x (6.54 against 13.84 s); at
the smoke size (``--repeats 5``) 2.06x, 3.14 against 6.47 s (1.96x, 3.30 against 6.46 s). The scorer's FLOPs
(``--count-flops``): 998.2 against 3395.7 GFLOP at 17 frames of 256x320 (3.40x; 1208.8 before the Winograd
encoders), 271.1 against 642.3 at the smoke size (2.37x; 303.7 before). CLIP and DINO run at this machine's
matrix-product rate (DINO's ``addmm`` at 94 GFLOP/s on one thread, 74% of its time, attention 11%, GELU 6%) on the
same FLOPs as the peers: their ratios (1.5x and 1.3x) are what batching and the class-token last block give. The
README's main job: 35.7-39.4 s (three runs) against 42.9 s before, its mp4s byte-identical, scores.csv within 7e-6
(``dd_max_pair_score``, 4.5e-7 relative), the same D.D decisions and leaderboard.csv.

The rescore after one changed metric option recomputes only that family (the cache key is per family, tested in
``tests/test_score.py``).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from videobench.metrics import MetricInput, build_metrics
from videobench.metrics.dynamic import (
    NUM_FLOW_UPDATES,
    dynamic_count_needed,
    dynamic_threshold,
    flow_pair_score,
    kept_frame_indices,
    pad_for_raft,
)
from videobench.metrics.preprocess import (
    check_precision,
    embed_images,
    frames_to_tensor,
    image_to_tensor,
    precision_context,
)
from videobench.weights import WeightsConfig

COLUMNS = ("clip_t", "clip_i", "dino_i", "t_cons", "dynamic")
PROMPT = "a corgi running along a beach at sunset, the camera tracking it"


def synthetic_video(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A textured scene panning right by 6 px per frame (deterministic)."""
    rng = np.random.default_rng(seed)
    canvas = rng.integers(0, 256, (height // 8 + 1, (width + 6 * num_frames) // 8 + 1, 3), dtype=np.uint8)
    canvas = np.asarray(Image.fromarray(canvas).resize((canvas.shape[1] * 8, canvas.shape[0] * 8), Image.BICUBIC))
    return np.stack([canvas[:height, 6 * t : 6 * t + width] for t in range(num_frames)])


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], dict[str, float]], device: str) -> tuple[dict[str, float], float]:
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


# --- the naive per-frame loop (VBench's style) --------------------------------------------------------------
def naive_clip(metric, sample: MetricInput) -> dict[str, float]:
    def embed(image: torch.Tensor) -> torch.Tensor:  # one image, batch of 1
        return embed_images(metric.model.encode_image, image, metric.preprocess,
                            batch_size=1, device=metric.device, dtype=metric.dtype)[0]

    frames = [embed(image_to_tensor(Image.fromarray(frame))) for frame in sample.frames]
    refs = [embed(image_to_tensor(ref)) for ref in sample.references]
    tokens = metric.tokenizer([sample.prompt]).to(metric.device)
    with torch.inference_mode(), precision_context(metric.device, metric.dtype):  # open_clip's encode_text on the
        text = metric.model.encode_text(tokens).float()  # padded 77 tokens, as the peers' code calls it
    text = torch.nn.functional.normalize(text, dim=-1)[0]
    return {
        "clip_t": float(np.mean([float(f @ text) for f in frames])),
        "clip_i": float(np.mean([float(r @ f) for r in refs for f in frames])),
        "t_cons": float(np.mean([float(a @ b) for a, b in zip(frames[:-1], frames[1:])])),
    }


def naive_dino(metric, sample: MetricInput) -> dict[str, float]:
    def embed(image: torch.Tensor) -> torch.Tensor:
        return embed_images(metric.model, image, metric.preprocess, batch_size=1,
                            device=metric.device, dtype=metric.dtype)[0]

    frames = [embed(image_to_tensor(Image.fromarray(frame))) for frame in sample.frames]
    refs = [embed(image_to_tensor(ref)) for ref in sample.references]
    return {"dino_i": float(np.mean([float(r @ f) for r in refs for f in frames]))}


def naive_dynamic(metric, sample: MetricInput) -> dict[str, float]:
    """VBench ``DynamicDegree.infer``: per pair pad, ``model(...)`` with 20 updates, numpy score, ``check_move``."""
    frames = [torch.from_numpy(sample.frames[i]).permute(2, 0, 1)[None].float().to(metric.device)
              for i in kept_frame_indices(len(sample.frames), sample.fps)]
    height, width = frames[0].shape[-2:]
    threshold, needed = dynamic_threshold(height, width, sample.fps, metric.rule), dynamic_count_needed(len(frames))
    scores, count, moving = [], 0, False
    with torch.inference_mode():
        for image1, image2 in zip(frames[:-1], frames[1:]):
            image1, image2 = (pad_for_raft(x / 127.5 - 1.0) for x in (image1, image2))
            flow = metric.model(image1, image2, num_flow_updates=metric.num_flow_updates)[-1]
            scores.append(flow_pair_score(flow[0].cpu().numpy()))
            count += scores[-1] > threshold
            moving = moving or count >= needed
    return {"dynamic": float(moving), "dd_max_pair_score": max(scores), "pair_scores": scores}


def scorer_pair_scores(metric, sample: MetricInput) -> list[float]:
    """The scorer's RAFT pair scores of ``sample`` (what :meth:`DynamicDegreeMetric.score` thresholds)."""
    kept = frames_to_tensor(np.asarray(sample.frames)[kept_frame_indices(len(sample.frames), sample.fps)])
    return metric.pair_scores(kept).tolist()


NAIVE = {"clip": naive_clip, "dino": naive_dino, "dynamic": naive_dynamic}


#: The agreement asserted between the two paths: cosines (absolute), RAFT pair scores (relative).
COSINE_TOLERANCE = 1e-5
PAIR_SCORE_TOLERANCE = 1e-4


def check_equal(batched: dict[str, float], naive: dict[str, float],
                batched_pairs: list[float] | None = None) -> None:
    """Assert the scorer's values equal the peer loop's: same D.D decision, every pair score within
    :data:`PAIR_SCORE_TOLERANCE` relative (``batched_pairs``), cosines within :data:`COSINE_TOLERANCE`."""
    for key, value in naive.items():
        if key == "dynamic":
            assert batched[key] == value, (key, batched[key], value)
        elif key == "pair_scores":
            if batched_pairs is not None:
                assert len(batched_pairs) == len(value), (key, batched_pairs, value)
                for got, want in zip(batched_pairs, value):
                    assert abs(got - want) <= PAIR_SCORE_TOLERANCE * abs(want), (key, got, want)
        elif key == "dd_max_pair_score":
            assert abs(batched[key] - value) <= PAIR_SCORE_TOLERANCE * abs(value), (key, batched[key], value)
        else:
            assert abs(batched[key] - value) <= COSINE_TOLERANCE, (key, batched[key], value)


def build_sample(num_frames: int, height: int, width: int, fps: float = 8.0, references: int = 3) -> MetricInput:
    """The scored input: :func:`synthetic_video` plus ``references`` 512x512 reference images and :data:`PROMPT`."""
    frames = synthetic_video(num_frames, height, width)
    images = [Image.fromarray(synthetic_video(1, 512, 512, seed=s)[0]) for s in range(1, references + 1)]
    return MetricInput(frames, fps, images, PROMPT)


def random_metrics(device: str, dtype: str = "fp32", batch_size: int = 64, pair_batch: int = 16,
                   num_flow_updates: int = NUM_FLOW_UPDATES) -> list:
    """All five metrics with seeded random weights (the real architectures): ``batch_size`` frames per CLIP/DINO
    batch, ``pair_batch`` RAFT pairs per batch, ``num_flow_updates`` RAFT refinements (VBench: 20)."""
    options = {"clip": {"batch_size": batch_size}, "dino": {"batch_size": batch_size},
               "dynamic": {"pair_batch_size": pair_batch, "num_flow_updates": num_flow_updates}}
    return build_metrics(COLUMNS, WeightsConfig(), device=device, dtype=dtype, random_weights=True, options=options)


def warm_up(metrics, sample: MetricInput, naive: bool = False) -> None:
    """Score once per metric (cuDNN autotuning, the allocator), and once through the naive loop if ``naive``."""
    for metric in metrics:
        metric.score(sample)
        if naive:
            NAIVE[metric.family](metric, sample)


def forget_embeddings(metric) -> None:
    """Empty the metric's embedding memo: each timed call computes the video's and the references' embeddings."""
    memo = getattr(metric, "_memo", None)
    if memo is not None:
        memo.clear()


def time_paths(metrics, sample: MetricInput, device: str, repeats: int = 1,
               naive: bool = True) -> dict[str, dict[str, float]]:
    """Median seconds per metric family over ``repeats`` rounds of the scorer (``"batched"``) and of the peer loop
    (``"naive"``, empty unless ``naive``), the two alternating within each round; asserts both give the same scores
    (:func:`check_equal`, on the first round)."""
    runs: dict[str, dict[str, list[float]]] = {"batched": {}, "naive": {}}
    for round_ in range(repeats):
        for metric in metrics:
            forget_embeddings(metric)
            out, seconds = timed(lambda m=metric: m.score(sample), device)
            runs["batched"].setdefault(metric.family, []).append(seconds)
            if not naive:
                continue
            reference, seconds = timed(lambda m=metric: NAIVE[m.family](m, sample), device)
            runs["naive"].setdefault(metric.family, []).append(seconds)
            if round_ == 0:
                pairs = scorer_pair_scores(metric, sample) if "pair_scores" in reference else None
                check_equal(out, reference, pairs)
    return {path: {family: statistics.median(values) for family, values in row.items()}
            for path, row in runs.items()}


def print_table(rows: dict[str, dict[str, float]], families: list[str]) -> None:
    """The seconds per family and per video of each path, and the speed-up over the naive loop."""
    print(f"\n| path    | {' | '.join(f'{f:>8}' for f in families)} | s/video | speed-up |")
    print(f"|---------|{'|'.join('-' * 10 for _ in families)}|---------|----------|")
    total_naive = sum(rows["naive"].values()) if rows["naive"] else None
    for path, row in rows.items():
        if not row:
            continue
        total = sum(row.values())
        speedup = f"{total_naive / total:7.2f}x" if total_naive else "       -"
        print(f"| {path:7} | {' | '.join(f'{row[f]:8.3f}' for f in families)} | {total:7.3f} | {speedup} |")
    if rows["naive"]:
        print(f"\nsame scores on both paths (cosines within {COSINE_TOLERANCE:g}, pair scores within "
              f"{PAIR_SCORE_TOLERANCE:g} relative, same D.D decision): OK")


def count_flops(metrics, sample: MetricInput) -> dict[str, dict[str, float]]:
    """FLOPs per metric family of the scorer (``"batched"``) and of the peer loop (``"naive"``), counted by
    ``torch.utils.flop_counter.FlopCounterMode`` (matrix products and convolutions; elementwise work not counted).
    The counter sees the calling thread only, so the scorer runs without CPU workers here (the same operators on
    the same pieces' rows in fewer, larger batches: the same FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    flops: dict[str, dict[str, float]] = {"batched": {}, "naive": {}}
    for metric in metrics:
        workers, metric.cpu_workers = metric.cpu_workers, 1
        try:
            for path, run in (("batched", metric.score), ("naive", lambda m=metric: NAIVE[m.family](m, sample))):
                forget_embeddings(metric)
                with FlopCounterMode(display=False) as counter:
                    run(sample) if path == "batched" else run()
                flops[path][metric.family] = float(counter.get_total_flops())
        finally:
            metric.cpu_workers = workers
    return flops


def print_flop_table(flops: dict[str, dict[str, float]], seconds: dict[str, dict[str, float]],
                     families: list[str]) -> None:
    """GFLOP per family and per video of each path, the peers' FLOPs over the scorer's (the speed-up that equal
    efficiency would give) and the rate each path reached (GFLOP/s over its timed seconds)."""
    print(f"\n| path    | {' | '.join(f'{f:>8}' for f in families)} |  GFLOP | FLOP ratio | GFLOP/s |")
    print(f"|---------|{'|'.join('-' * 10 for _ in families)}|--------|------------|---------|")
    total_naive = sum(flops["naive"].values())
    for path in ("batched", "naive"):
        total = sum(flops[path].values())
        rate = f"{total / sum(seconds[path].values()) / 1e9:7.1f}" if seconds.get(path) else "      -"
        print(f"| {path:7} | {' | '.join(f'{flops[path][f] / 1e9:8.1f}' for f in families)} | {total / 1e9:6.1f} "
              f"| {total_naive / total:9.2f}x | {rate} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=720)
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--references", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--pair-batch", type=int, default=16, help="RAFT pairs per batch")
    parser.add_argument("--batch-size", type=int, default=64, help="frames per CLIP/DINO batch")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--compare-dtype", choices=["fp16", "bf16"], help="also score in this autocast dtype "
                        "(CUDA) and print the largest change against fp32, on the x100 scale")
    parser.add_argument("--no-naive", action="store_true", help="time only the batched path")
    parser.add_argument("--count-flops", action="store_true", help="also count both paths' FLOPs (FlopCounterMode) "
                        "and print the FLOP ratio and the GFLOP/s each path reached")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True
    metrics = random_metrics(args.device, args.dtype, args.batch_size, args.pair_batch)
    sample = build_sample(args.frames, args.height, args.width, args.fps, args.references)
    device_name = torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else "cpu"
    print(f"RANDOM WEIGHTS (timings only) | device {args.device} ({device_name}), {args.dtype}, torch threads "
          f"{torch.get_num_threads()} | {args.frames} frames {args.height}x{args.width} @ {args.fps:g} fps, "
          f"{args.references} references, RAFT pair batch {args.pair_batch}")

    if torch.device(args.device).type == "cuda":  # warm-up: cuDNN autotuning, allocator
        warm_up(metrics, sample)
    load_before = os.getloadavg()
    rows = time_paths(metrics, sample, args.device, args.repeats, naive=not args.no_naive)
    print_table(rows, [metric.family for metric in metrics])
    print(f"medians of {args.repeats} interleaved round(s); load average (1, 5, 15 min) before "
          f"{', '.join(f'{x:.1f}' for x in load_before)}, after {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if args.count_flops and not args.no_naive:
        print_flop_table(count_flops(metrics, sample), rows, [metric.family for metric in metrics])
    if args.compare_dtype:
        compare_precision(metrics, sample, args.device, args.compare_dtype)


def compare_precision(metrics, sample: MetricInput, device: str, dtype: str) -> None:
    """Score once in fp32 and once under ``dtype`` autocast with the same models; print |difference| x 100."""
    check_precision(device, dtype)
    print(f"\n| column  | fp32     | {dtype:8} | |diff| x100 |")
    print("|---------|----------|----------|-------------|")
    for metric in metrics:
        reduced = copy.copy(metric)
        reduced.dtype = dtype
        full, (low, seconds) = metric.score(sample), timed(lambda m=reduced: m.score(sample), device)
        for column in metric.columns:
            drift = abs(full[column] - low[column]) * 100
            print(f"| {column:7} | {full[column]:8.5f} | {low[column]:8.5f} | {drift:11.4f} |")
        print(f"| ({metric.family} in {dtype}: {seconds:.3f} s)")


if __name__ == "__main__":
    main()
