"""The task table: what goes in the prefix and what the LM writes, per task. Data, not subclasses.

Every task is one `TaskSpec`: an ordered tuple of prefix parts and an ordered tuple of output parts.
A part names the key it is read from (`inputs["first_frame"]`, `outputs["video"]`), its modality
(text, visual or audio) and, when a task has two inputs of one modality, the `<source:NAME>` token
written before it so the model can tell them apart. `videopoet.lm.sequence` turns a spec and its
inputs into token ids (see DESIGN.md, "Unified vocabulary and sequence layout"):

    <bos><task:NAME> [<source:S>]<bot_i> text <eot_i> [<source:S>]<bov_i> visual <eov_i> ...
    [<res:HxW>] <bov_o> visual <eov_o> [<boa_o> audio <eoa_o>] <eos>

`open_end` tasks (t2i) stop after the last output code, without `<eov_o><eos>`: an image is the
first frame of a video that can continue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from videopoet.errors import InputError

Modality = Literal["text", "visual", "audio"]


@dataclass(frozen=True)
class Part:
    name: str  # key in the inputs/outputs mapping
    modality: Modality
    source: str | None = None  # a <source:NAME> token written before the part
    optional: bool = False  # may be absent (text dropped for classifier-free guidance, ...)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    prefix: tuple[Part, ...]
    outputs: tuple[Part, ...]
    open_end: bool = False  # omit <eov_o><eos> (t2i)
    description: str = ""
    token: str = ""  # the task token written as <task:TOKEN> (default: the name; tasks may share one)

    def __post_init__(self):
        if not self.token:
            object.__setattr__(self, "token", self.name)
        if not self.outputs:
            raise ValueError(f"task {self.name}: needs at least one output part")
        if any(p.modality == "text" for p in self.outputs):
            raise ValueError(f"task {self.name}: the LM does not write text")
        names = [p.name for p in self.prefix]
        if len(set(names)) != len(names):
            raise ValueError(f"task {self.name}: duplicate prefix part names {names}")
        order = {"text": 0, "visual": 1, "audio": 2}
        for parts in (self.prefix, self.outputs):
            ranks = [order[p.modality] for p in parts]
            if ranks != sorted(ranks):
                raise ValueError(f"task {self.name}: parts must be ordered text, visual, audio")
        if self.open_end and self.outputs[-1].modality != "visual":
            raise ValueError(f"task {self.name}: open_end needs a visual last output")


TEXT = Part("text", "text", optional=True)
VIDEO_OUT = Part("video", "visual")
AUDIO_OUT = Part("audio", "audio")

_TABLE = (
    # One task token for text-to-video, text-to-image and unconditional video (as in the paper):
    # an image is the first frame of a video (t2i is t2v with a 1-frame output and no end tokens, so
    # it can continue as a video), and "no text" has one encoding, the text part left out -- the
    # same sequence for unconditional training, ~10% text dropout, and the unconditional rows of
    # classifier-free guidance.
    TaskSpec("t2v", (TEXT,), (VIDEO_OUT,), description="text -> video"),
    TaskSpec("t2i", (TEXT,), (VIDEO_OUT,), open_end=True, description="text -> image (first frame)", token="t2v"),
    TaskSpec("uncond", (), (VIDEO_OUT,), description="nothing -> video (t2v without text)", token="t2v"),
    TaskSpec(
        "i2v",
        (TEXT, Part("first_frame", "visual")),
        (VIDEO_OUT,),
        description="first frame (+ text) -> video",
    ),
    TaskSpec(
        "frame_pred",
        # text: continue "with a prompt" (optional, dropped like any text); anchor: the first latent
        # frame of the first chunk of a long video, kept clean while the context drifts (drift
        # control, DESIGN.md "Long video"); context: the first k latent frames of a fresh clip.
        (TEXT, Part("anchor", "visual", source="anchor", optional=True), Part("context", "visual")),
        (VIDEO_OUT,),
        description="[text +] [anchor frame +] first k latent frames -> the following latent frames (long-video chaining)",
    ),
    TaskSpec(
        "inpaint",
        (TEXT, Part("masked", "visual")),
        (VIDEO_OUT,),
        description="video with masked tokens (code -1 -> <mask>) -> full video",
    ),
    TaskSpec(
        "outpaint",
        (TEXT, Part("masked", "visual")),
        (VIDEO_OUT,),
        description="video with masked border tokens (code -1 -> <mask>) -> full video",
    ),
    TaskSpec(
        "stylize",
        (
            TEXT,
            Part("structure", "visual", source="structure", optional=True),
            Part("first_frame", "visual", source="first_frame", optional=True),
        ),
        (VIDEO_OUT,),
        description="text + structure video (flow + depth/edges, tokenized as video) [+ first frame] -> video",
    ),
    # v2a's video is optional so that its guidance branch can drop it: "audio" (v2a without the
    # video, one encoding as for "uncond") trains that branch on audio-only rows, which are short
    # (~430 tokens against v2a's ~2,700), so a step holds ~6x the audio codes of a v2a step
    TaskSpec("v2a", (Part("video", "visual", optional=True),), (AUDIO_OUT,), description="video -> audio"),
    TaskSpec("audio", (), (AUDIO_OUT,), description="nothing -> audio (v2a without the video)", token="v2a"),
    TaskSpec("a2v", (TEXT, Part("audio", "audio")), (VIDEO_OUT,), description="audio (+ text) -> video"),
    TaskSpec(
        "avcont",
        (Part("first_frame", "visual"), Part("audio", "audio")),
        (VIDEO_OUT, AUDIO_OUT),
        description="first frame + its audio -> the rest of the video and its audio",
    ),
)

TASKS: dict[str, TaskSpec] = {t.name: t for t in _TABLE}
# task token -> the task that parse_sequence reports for it (t2i/uncond sequences read back as t2v)
BY_TOKEN: dict[str, str] = {}
for _t in _TABLE:
    BY_TOKEN.setdefault(_t.token, _t.name)

# <source:NAME> tokens used by any task (the vocabulary reserves one id for each).
SOURCES: tuple[str, ...] = tuple(sorted({p.source for t in _TABLE for p in t.prefix if p.source is not None}))


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise InputError(f"task {name!r}: unknown (known: {', '.join(TASKS)})") from None
