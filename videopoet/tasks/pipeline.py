"""One pipeline for every task: media and text in, media and tokens out.

    from videopoet.tasks.pipeline import Pipeline
    pipe = Pipeline.from_pretrained()            # the embedded default (videopoet/assets)
    out = pipe.t2v("a small red circle moving left", seed=0)
    out.save("red_circle.mp4")                  # frames, sound (tasks with audio), tokens

A pipeline is three tokenizers and the LM, loaded from a model directory
(`DIR/{lm,video_tokenizer,audio_tokenizer,text_spm}` + `pipeline.json`; `save(DIR)` writes one).
Inputs of any size, frame rate, length, sample rate or channel count are centre-cropped and
resized, resampled, cut or padded to what the model was trained on (17 frames of 64x64 at 8 fps,
16 kHz mono for the embedded default), and each such change is reported on stderr; unreadable
inputs raise a one-line error naming the file. Every task builds its prefix with the same
sequence builder as training (videopoet/lm/sequence.py) and decodes with the same generator
(videopoet/lm/generate.py); pinned output codes keep what a task must not change (inpainting's
and outpainting's known codes, image-to-video's first latent frame). Long video (`extend`) is in
videopoet/tasks/longvideo.py.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from videopoet.errors import InputError, MediaError, VideoPoetError

PIPELINE_NAME = "pipeline.json"
PARTS = {"lm": "lm", "video": "video_tokenizer", "audio": "audio_tokenizer", "text": "text_spm"}
TASK_NAMES = ("t2v", "t2i", "i2v", "continue", "inpaint", "outpaint", "stylize", "v2a", "a2v", "avcont")


@dataclass
class Settings:
    """What the LM was trained on (pipeline.json) and the sampling defaults."""

    frames: int = 17
    size: int = 64
    fps: float = 8.0
    context_frames: int = 2  # latent frames of context in frame prediction (training's frame_pred_context)
    guidance: float = 1.0  # classifier-free guidance scale when a task has a condition to drop
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    # per LM task (videopoet/lm/tasks.py: "frame_pred" serves continue and extend), a temperature
    # that replaces `temperature` for it. Tasks that copy most of their output from the input
    # (inpainting) draw fewer wrong codes cooler (benchmarks/RESULTS.md, session 15)
    task_temperature: dict[str, float] = field(default_factory=dict)
    # frame prediction with an anchor frame (continue --image, extend): the guidance branch drops
    # the anchor as well as the text, so guidance pulls the new frames towards the anchor's content
    anchor_guidance: bool = False
    # per LM task, a guidance scale that replaces `guidance` for it. v2a's guidance branch drops
    # the video, which only an LM trained on "audio" rows (v2a without the video) has seen, so v2a
    # is guided only when this names it (default 1: no guidance branch)
    task_guidance: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        from videopoet.lm.tasks import TASKS

        for name, table, low in (("task_temperature", self.task_temperature, 0), ("task_guidance", self.task_guidance, 1)):
            for task, t in table.items():
                if task not in TASKS:
                    raise InputError(f"{name}: unknown task {task!r} (known: {', '.join(TASKS)})")
                if not isinstance(t, (int, float)) or isinstance(t, bool) or t < low:
                    raise InputError(f"{name}.{task}: expected a number >= {low}, got {t!r}")

    def temperature_for(self, task: str) -> float:
        """The sampling temperature of LM task `task`."""
        return float(self.task_temperature.get(task, self.temperature))

    def guidance_for(self, task: str) -> float:
        """The guidance scale of LM task `task` (v2a: 1 unless task_guidance names it)."""
        return float(self.task_guidance.get(task, 1.0 if task == "v2a" else self.guidance))


@dataclass
class Result:
    """A task's output. frames: uint8 (T, H, W, 3); audio: float32 (S,) or None; tokens: the codes."""

    task: str
    frames: np.ndarray | None
    fps: float
    audio: np.ndarray | None = None
    sample_rate: int = 16000
    tokens: dict[str, torch.Tensor] = field(default_factory=dict)
    prompt: str | None = None
    seed: int | None = None
    notes: list[str] = field(default_factory=list)

    def save(self, path: str | Path, *, sheet: bool = True) -> Path:
        """Write the output: .mp4 (with AAC audio when there is audio), .png for one frame, .wav
        for audio alone; a contact sheet PATH.sheet.png beside a video; the tokens as PATH.tokens.pt
        is left to the caller (`torch.save(result.tokens, ...)`)."""
        from videopoet.data.writers import write_audio, write_contact_sheet, write_image, write_video

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        ext = path.suffix.lower()
        if ext in (".wav", ".flac"):
            if self.audio is None:
                raise InputError(f"{path}: this {self.task} result has no audio")
            return write_audio(path, self.audio[None], self.sample_rate)
        if self.frames is None:
            raise InputError(f"{path}: this {self.task} result has only audio; save it as .wav")
        if ext in (".png", ".jpg", ".jpeg"):
            if len(self.frames) != 1 and sheet:
                return write_contact_sheet(path, [self.frames], labels=[self.prompt or self.task])
            return write_image(path, self.frames[0])
        audio = None if self.audio is None else self.audio[None]
        out = write_video(path, self.frames, self.fps, audio=audio, sample_rate=self.sample_rate)
        if sheet and len(self.frames) > 1:
            write_contact_sheet(path.with_suffix(".sheet.png"), [self.frames], labels=[self.prompt or self.task])
        return out


def _note(notes: list[str], msg: str, quiet: bool) -> None:
    notes.append(msg)
    if not quiet:
        print(msg, file=sys.stderr)


class Pipeline:
    def __init__(self, lm, vocab, video_tokenizer, audio_tokenizer, text_tokenizer, settings: Settings | None = None,
                 *, quiet: bool = False):
        from videopoet.lm.vocab import Vocabulary

        self.lm, self.vocab = lm.eval(), vocab
        self.vt, self.at, self.tt = video_tokenizer.eval(), audio_tokenizer.eval() if audio_tokenizer else None, text_tokenizer
        self.settings = settings or Settings()
        self.quiet = quiet
        self.embedding = not hasattr(text_tokenizer, "encode")  # a frozen text encoder (embedding mode)
        have = Vocabulary.from_tokenizers(self.vt, self.at, None if self.embedding else self.tt)
        vocab.check_same(have, "the LM's vocab.json", "the pipeline's tokenizers")
        s = self.settings
        tc, sc = self.vt.config.temporal_compression, self.vt.config.spatial_compression
        if (s.frames - 1) % tc or s.size % sc:
            raise VideoPoetError(f"{PIPELINE_NAME}: frames {s.frames} must be 1 + k*{tc} and size {s.size} a multiple of {sc}")
        self.latent = (1 + (s.frames - 1) // tc, s.size // sc, s.size // sc)  # (t, h, w)
        if not 1 <= s.context_frames < self.latent[0]:
            raise VideoPoetError(f"{PIPELINE_NAME}: context_frames {s.context_frames} must be in 1..{self.latent[0] - 1} "
                                 f"(continuation needs latent frames left to generate of the {self.latent[0]} in a clip)")
        self._audio_frames: int | None = None

    # ------------------------------------------------------------------------------ load / save
    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, *, lm: str | Path | None = None, quiet: bool = False,
                        device: str = "cpu") -> Pipeline:
        """A pipeline directory (see the module docstring), or the embedded default when None.
        `lm` replaces the directory's LM (e.g. a training run's export)."""
        from videopoet.assets import asset_dir
        from videopoet.lm.pretrained import load_lm
        from videopoet.tokenizers.audio import AudioTokenizer
        from videopoet.tokenizers.text import SentencePieceTextTokenizer
        from videopoet.tokenizers.video import VideoTokenizer

        if path is None:
            dirs = {k: asset_dir(v) for k, v in PARTS.items() if not (k == "lm" and lm is not None)}
            settings_file = asset_dir("lm") / PIPELINE_NAME
        else:
            root = Path(path)
            if not root.is_dir():
                raise VideoPoetError(f"{root}: model directory not found")
            if (root / "vocab.json").is_file() and not (root / "lm").is_dir():  # an LM directory alone
                return cls.from_pretrained(None, lm=root, quiet=quiet, device=device)
            dirs = {k: root / v for k, v in PARTS.items()}
            missing = [v for k, v in PARTS.items() if not dirs[k].is_dir() and k != "audio"]
            if missing:
                raise VideoPoetError(f"{root}: not a pipeline directory ({', '.join(missing)} missing)")
            settings_file = root / PIPELINE_NAME
            if not settings_file.is_file():
                # a directory put together by hand (the parts of videopoet/assets keep pipeline.json
                # beside the LM): the LM's settings, else the embedded ones, never the bare Settings()
                found = dirs["lm"] / PIPELINE_NAME
                settings_file = found if found.is_file() else asset_dir("lm") / PIPELINE_NAME
                if not quiet:
                    print(f"pipeline: {root} has no {PIPELINE_NAME}; using the settings of {settings_file}", file=sys.stderr)
        if lm is not None:
            dirs["lm"] = Path(lm)
            if (Path(lm) / PIPELINE_NAME).is_file():
                settings_file = Path(lm) / PIPELINE_NAME
            elif settings_file.is_file() and not quiet:
                # a training run's export has no pipeline.json: sample with the pipeline's defaults
                # (guidance, frame-prediction context), not the bare Settings() ones
                print(f"pipeline: {lm} has no {PIPELINE_NAME}; using the settings of {settings_file}", file=sys.stderr)
        settings = Settings()
        if settings_file.is_file():
            from videopoet.config import from_dict

            settings = from_dict(Settings, json.loads(settings_file.read_text()), where=str(settings_file))
        model, vocab = load_lm(dirs["lm"], map_location=device)
        vt = VideoTokenizer.from_pretrained(dirs["video"])
        at = AudioTokenizer.from_pretrained(dirs["audio"]) if dirs["audio"].is_dir() and vocab.audio_levels else None
        if (dirs["text"] / "spm.model").is_file():
            tt = SentencePieceTextTokenizer.from_pretrained(dirs["text"])
        else:  # embedding mode: a transformers text encoder directory
            from videopoet.tokenizers.text import TextEmbedder

            tt = TextEmbedder(dirs["text"])
        return cls(model, vocab, vt, at, tt, settings, quiet=quiet)

    def save(self, path: str | Path, *, dtype: torch.dtype | None = torch.float16) -> Path:
        """Write a pipeline directory that `from_pretrained(path)` loads."""
        from videopoet.config import save_json, to_dict
        from videopoet.lm.pretrained import save_lm

        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        save_lm(root / PARTS["lm"], self.lm, self.vocab, dtype=dtype)
        self.vt.save_pretrained(root / PARTS["video"])
        if self.at is not None:
            self.at.save_pretrained(root / PARTS["audio"])
        if self.embedding:
            import shutil

            shutil.copytree(self.tt.model_dir, root / PARTS["text"], dirs_exist_ok=True)
        else:
            self.tt.save_pretrained(root / PARTS["text"])
        save_json(to_dict(self.settings), root / PIPELINE_NAME)
        return root

    # ------------------------------------------------------------------------------ inputs
    def _video(self, x: Any, name: str, notes: list[str], *, frames: int | None = None,
               fit: bool = False) -> np.ndarray:
        """A path or uint8 (T, H, W, 3) array -> uint8 (frames, size, size, 3) (frames None: all)."""
        from videopoet.data.media import _check_frames, crop_resize, read_video

        s = self.settings
        if isinstance(x, Result):  # chaining: the previous task's output
            if x.frames is None:
                raise InputError(f"{name}: the {x.task} result has no frames")
            x = x.frames
        if isinstance(x, (str, Path)):
            from videopoet.data.media import probe

            info = probe(x)
            data = read_video(x, fps=s.fps, size=None if fit else s.size, crop="center")
            v = data.frames
            if info.fps and abs(float(info.fps) - s.fps) > 1e-3 and len(v) > 1:
                _note(notes, f"{name} {x}: {float(info.fps):.3g} fps resampled to {s.fps:g}", self.quiet)
            if (info.width, info.height) != (s.size, s.size) and not fit:
                _note(notes, f"{name} {x}: {info.width}x{info.height} centre-cropped and resized to {s.size}x{s.size}",
                      self.quiet)
        else:
            try:
                v = _check_frames(np.asarray(x), name)
            except InputError as e:
                raise InputError(str(e).splitlines()[0]) from None
            if v.shape[1:3] != (s.size, s.size) and not fit:
                _note(notes, f"{name}: {v.shape[2]}x{v.shape[1]} centre-cropped and resized to {s.size}x{s.size}", self.quiet)
                v = crop_resize(v, s.size, mode="center")
        if len(v) == 0:
            raise InputError(f"{name}: no frames")
        if frames is not None and len(v) != frames:
            if len(v) > frames:
                _note(notes, f"{name}: {len(v)} frames, the first {frames} used", self.quiet)
                v = v[:frames]
            else:
                _note(notes, f"{name}: {len(v)} frames, padded to {frames} by repeating the last", self.quiet)
                v = np.concatenate([v, np.repeat(v[-1:], frames - len(v), axis=0)])
        return np.ascontiguousarray(v)

    def _audio(self, x: Any, name: str, notes: list[str], seconds: float) -> np.ndarray:
        """A path or (S,) / (C, S) float array at the codec's rate -> float32 (S,) of `seconds`."""
        from videopoet.data.media import fit_length, probe, read_audio
        from videopoet.tokenizers.audio import prepare_waveform

        if self.at is None:
            raise InputError(f"{name}: this pipeline has no audio codec")
        sr = self.at.sample_rate
        if isinstance(x, Result):
            if x.audio is None:
                raise InputError(f"{name}: the {x.task} result has no audio")
            x = x.audio
        if isinstance(x, (str, Path)):
            info = probe(x)
            if not info.has_audio:
                raise MediaError(x, "has no audio track")
            a, _ = read_audio(x, sample_rate=sr, mono=True)
            if info.sample_rate and int(info.sample_rate) != sr:
                _note(notes, f"{name} {x}: {info.sample_rate} Hz resampled to {sr}", self.quiet)
            if (info.audio_channels or 1) > 1:
                _note(notes, f"{name} {x}: {info.audio_channels} channels mixed down to mono", self.quiet)
        else:
            t, msgs = prepare_waveform(np.asarray(x, np.float32), sr, sr, name=name)
            for m in msgs:
                _note(notes, m, self.quiet)
            a = t.numpy()
        n = round(seconds * sr)
        if a.shape[-1] == 0:
            raise InputError(f"{name}: the audio is empty")
        if a.shape[-1] != n:
            _note(notes, f"{name}: {a.shape[-1] / sr:.2f} s of audio {'cut' if a.shape[-1] > n else 'padded with silence'}"
                  f" to {seconds:.3g} s", self.quiet)
        return fit_length(np.asarray(a, np.float32).reshape(1, -1), n)[0]

    @torch.no_grad()
    def encode_video(self, frames: np.ndarray) -> torch.Tensor:
        from videopoet.data.media import video_to_tensor

        return self.vt.encode(video_to_tensor(frames)[None])[0]

    @torch.no_grad()
    def decode_video(self, codes: torch.Tensor) -> np.ndarray:
        from videopoet.data.media import tensor_to_video

        return tensor_to_video(self.vt.decode(codes[None].long()))

    @torch.no_grad()
    def encode_audio(self, audio: np.ndarray) -> torch.Tensor:
        return self.at.encode(torch.from_numpy(np.clip(audio, -1, 1)).float()[None, None])[0]

    @torch.no_grad()
    def decode_audio(self, codes: torch.Tensor) -> np.ndarray:
        return self.at.decode(codes[None].long())[0, 0].numpy()

    @property
    def seconds(self) -> float:
        return self.settings.frames / self.settings.fps

    @property
    def audio_frames(self) -> int:
        """Codec frames of one clip's soundtrack (as tokenized for training)."""
        if self._audio_frames is None:
            self._audio_frames = int(self.encode_audio(np.zeros(round(self.seconds * self.at.sample_rate), np.float32)).shape[-1])
        return self._audio_frames

    def _text(self, prompt: str | None, name: str = "prompt") -> torch.Tensor | None:
        if prompt is None:
            return None
        if not isinstance(prompt, str):
            raise InputError(f"{name}: expected a string, got {type(prompt).__name__}")
        if not prompt.strip():
            return None
        if self.embedding:
            e = self.tt([prompt], on_overflow="error")
            return e.embeddings[0][e.mask[0]]
        enc = self.tt.encode([prompt], on_overflow="error")
        return enc.ids[0][enc.mask[0]]

    # ------------------------------------------------------------------------------ generation core
    def generate_codes(self, task: str, inputs: dict[str, torch.Tensor], outputs: dict[str, Any], *,
                       frames: int | None = None, uncond_inputs: dict[str, torch.Tensor] | None = None,
                       guidance: float | tuple[float, float] | None = None, guidance_ramp: bool = False,
                       seed: int | None = 0, temperature: float | None = None, top_k: int | None = None,
                       top_p: float | None = None, progress: bool = False, rows: int = 1) -> dict[str, torch.Tensor]:
        """Prefix inputs + output shapes or partial codes (-1 = generate) -> the output codes.
        uncond_inputs: the inputs of the guidance branch (a condition dropped or a negative prompt);
        rows > 1 draws that many samples in one batch (-> codes with a leading batch dim)."""
        from videopoet.lm.generate import generate, make_prompt
        from videopoet.lm.sequence import build_sequence, output_codes

        s = self.settings
        res = f"{s.size}x{s.size}"
        res = res if self.vocab.has(f"<res:{res}>") else None
        frames = frames if frames is not None and self.vocab.has(f"<frames:{frames}>") else None
        seq = build_sequence(self.vocab, task, inputs, outputs, res=res, frames=frames)
        if len(seq) > self.lm.cfg.max_seq_len:
            raise InputError(f"{task}: the sequence has {len(seq)} tokens, more than the model's max_seq_len "
                             f"{self.lm.cfg.max_seq_len} (a shorter prompt or fewer frames)")
        g = s.guidance_for(task) if guidance is None else guidance
        uncond = None
        if uncond_inputs is not None and g != 1.0:
            useq = build_sequence(self.vocab, task, uncond_inputs, outputs, res=res, frames=frames)
            uncond = make_prompt([useq] * rows, self.vocab.pad_id)
        g = g if uncond is not None else 1.0
        if self.lm.n_visual and not isinstance(g, (tuple, list)):
            # sub-token by sub-token (each guided; with the pair bias the low one given the sampled
            # high one): no 2^K-wide logits. For independent factors this is the distribution of
            # one scale on the joint (without top-k / top-p)
            g = (float(g), float(g))
        ids = generate(self.lm, make_prompt([seq] * rows, self.vocab.pad_id), uncond=uncond,
                       guidance_scale=g, guidance_ramp=guidance_ramp,
                       temperature=s.temperature_for(task) if temperature is None else temperature,
                       top_k=s.top_k if top_k is None else top_k, top_p=s.top_p if top_p is None else top_p,
                       seed=seed, progress=progress, pad_id=self.vocab.pad_id, compile=False)
        out = output_codes(self.vocab, seq, ids.cpu())
        return out if rows > 1 else {k: v[0] for k, v in out.items()}

    def _guided(self, inputs: dict, drop: tuple[str, ...], negative_prompt: str | None) -> dict | None:
        """The guidance branch: `drop` removed, the text replaced by a negative prompt if given;
        None (no guidance) when the inputs have none of `drop`."""
        if not any(k in inputs for k in drop):
            return None
        u = {k: v for k, v in inputs.items() if k not in drop}
        neg = self._text(negative_prompt, "negative_prompt")
        if neg is not None:
            u["text"] = neg
        return u

    def _result(self, task: str, video: torch.Tensor | None, audio: torch.Tensor | None, *, prompt, seed,
                notes, tokens=None) -> Result:
        frames = self.decode_video(video) if video is not None else None
        if frames is not None and task != "t2i":
            frames = frames[: self.settings.frames]
        wav = self.decode_audio(audio) if audio is not None else None
        toks = dict(tokens or {})
        if video is not None:
            toks["video"] = video
        if audio is not None:
            toks["audio"] = audio
        return Result(task, frames, self.settings.fps, wav, self.at.sample_rate if self.at else 16000, toks,
                      prompt, seed, notes)

    # ------------------------------------------------------------------------------ tasks
    def t2v(self, prompt: str | None, *, negative_prompt: str | None = None, seed: int | None = 0, **kw) -> Result:
        """Text -> video (prompt None or "": unconditional video, the same task token without text)."""
        notes: list[str] = []
        text = self._text(prompt)
        inputs = {} if text is None else {"text": text}
        codes = self.generate_codes("t2v" if text is not None else "uncond", inputs, {"video": self.latent},
                                    frames=self.settings.frames, uncond_inputs=self._guided(inputs, ("text",), negative_prompt),
                                    seed=seed, **kw)
        return self._result("t2v", codes["video"], None, prompt=prompt, seed=seed, notes=notes)

    def t2i(self, prompt: str, *, negative_prompt: str | None = None, seed: int | None = 0, **kw) -> Result:
        """Text -> image: the first latent frame of a video (an image can continue as a video)."""
        text = self._text(prompt)
        if text is None:
            raise InputError("prompt: t2i needs a text prompt")
        inputs = {"text": text}
        codes = self.generate_codes("t2i", inputs, {"video": (1, *self.latent[1:])}, frames=1,
                                    uncond_inputs=self._guided(inputs, ("text",), negative_prompt), seed=seed, **kw)
        return self._result("t2i", codes["video"], None, prompt=prompt, seed=seed, notes=[])

    def i2v(self, image: Any, prompt: str | None = None, *, negative_prompt: str | None = None, seed: int | None = 0,
            **kw) -> Result:
        """First frame (+ text) -> video; the output's first latent frame is pinned to the image's."""
        notes: list[str] = []
        img = self._video(image, "image", notes)[:1]
        first = self.encode_video(img)[:1]
        text = self._text(prompt)
        inputs = {"first_frame": first} | ({} if text is None else {"text": text})
        want = torch.full(self.latent, -1, dtype=torch.long)
        want[0] = first[0]
        codes = self.generate_codes("i2v", inputs, {"video": want}, frames=self.settings.frames,
                                    uncond_inputs=self._guided(inputs, ("text",), negative_prompt),
                                    seed=seed, **kw)
        return self._result("i2v", codes["video"], None, prompt=prompt, seed=seed, notes=notes)

    def continue_video(self, video: Any, prompt: str | None = None, *, anchor: Any = None,
                       negative_prompt: str | None = None, seed: int | None = 0, anchor_guidance: bool | None = None,
                       **kw) -> Result:
        """The first `context_frames` latent frames of a video (+ text, + an anchor image) -> the
        clip's following latent frames; the result is the context frames followed by the new ones.
        anchor_guidance: the guidance branch drops the anchor too (None: pipeline.json's setting)."""
        notes: list[str] = []
        k = self.settings.context_frames
        n_ctx = 1 + (k - 1) * self.vt.config.temporal_compression
        v = self._video(video, "video", notes)
        if len(v) < n_ctx:
            raise InputError(f"video: needs at least {n_ctx} frames of context, got {len(v)}")
        if len(v) > n_ctx:
            _note(notes, f"video: its first {n_ctx} frames are the context ({len(v)} given)", self.quiet)
        ctx = self.encode_video(v[:n_ctx])
        codes, used = self._continue_codes(ctx, self._text(prompt), anchor, notes, negative_prompt, seed, kw,
                                           anchor_guidance=anchor_guidance)
        full = torch.cat([ctx, codes])
        return self._result("continue", full, None, prompt=prompt, seed=seed, notes=notes, tokens={"context": ctx, **used})

    def _continue_codes(self, ctx, text, anchor, notes, negative_prompt, seed, kw, anchor_guidance=None):
        inputs: dict[str, torch.Tensor] = {"context": ctx}
        if anchor_guidance is None:
            anchor_guidance = self.settings.anchor_guidance
        used = {}
        if anchor is not None:
            a = anchor if torch.is_tensor(anchor) else self.encode_video(self._video(anchor, "anchor", notes)[:1])[:1]
            inputs["anchor"] = a
            used["anchor"] = a
        if text is not None:
            inputs["text"] = text
        t = self.latent[0] - ctx.shape[0]
        drop = ("text", "anchor") if anchor_guidance else ("text",)
        out = self.generate_codes("frame_pred", inputs, {"video": (t, *self.latent[1:])}, frames=self.settings.frames,
                                  uncond_inputs=self._guided(inputs, drop, negative_prompt),
                                  seed=seed, **kw)
        return out["video"], used

    def _masked_task(self, task: str, v: np.ndarray, keep: torch.Tensor, prompt, negative_prompt, seed, notes, kw) -> Result:
        codes = self.encode_video(v)
        masked = torch.where(keep, codes, -1)
        text = self._text(prompt)
        inputs = {"masked": masked} | ({} if text is None else {"text": text})
        out = self.generate_codes(task, inputs, {"video": masked}, frames=self.settings.frames,
                                  uncond_inputs=self._guided(inputs, ("text",), negative_prompt),
                                  seed=seed, **kw)
        return self._result(task, out["video"], None, prompt=prompt, seed=seed, notes=notes,
                            tokens={"masked": masked, "input": codes})

    def inpaint(self, video: Any, *, box: tuple[int, int, int, int] | None = None, mask: Any = None,
                prompt: str | None = None, negative_prompt: str | None = None, seed: int | None = 0, **kw) -> Result:
        """Regenerate a region: `box` (top, left, bottom, right) in output pixels through all frames,
        or `mask` (H, W) or (T, H, W), True = regenerate. Latent cells touched by the region are
        generated; the others are pinned to the input's codes."""
        notes: list[str] = []
        v = self._video(video, "video", notes, frames=self.settings.frames)
        t, h, w = self.latent
        S = self.settings.size
        sc = self.vt.config.spatial_compression
        region = torch.zeros(t, h, w, dtype=torch.bool)
        if (box is None) == (mask is None):
            raise InputError("inpaint: give exactly one of box=(top, left, bottom, right) or mask")
        if box is not None:
            y0, x0, y1, x1 = (int(b) for b in box)
            if not (0 <= y0 < y1 <= S and 0 <= x0 < x1 <= S):
                raise InputError(f"box: (top, left, bottom, right) must lie in the {S}x{S} frame with top < bottom "
                                 f"and left < right, got {box}")
            region[:, y0 // sc : -(-y1 // sc), x0 // sc : -(-x1 // sc)] = True
        else:
            m = np.asarray(mask).astype(bool)
            if m.ndim == 2:
                m = np.repeat(m[None], self.settings.frames, axis=0)
            if m.ndim != 3 or m.shape[1:] != (S, S):
                raise InputError(f"mask: expected (H, W) or (T, H, W) booleans at {S}x{S}, got {m.shape}")
            m = self._fit_mask(m)
            region = torch.from_numpy(m)
        if not bool(region.any()):
            raise InputError("inpaint: the region is empty")
        return self._masked_task("inpaint", v, ~region, prompt, negative_prompt, seed, notes, kw)

    def _fit_mask(self, m: np.ndarray) -> np.ndarray:
        """(T, H, W) pixel mask -> (t, h, w) latent mask: a cell is masked if any of its pixels is."""
        tc, sc = self.vt.config.temporal_compression, self.vt.config.spatial_compression
        T = self.settings.frames
        m = np.concatenate([m, np.repeat(m[-1:], max(0, T - len(m)), 0)])[:T]
        t, h, w = self.latent
        groups = [m[:1]] + [m[1 + (i - 1) * tc : 1 + i * tc] for i in range(1, t)]  # causal: frame 0 alone
        out = np.stack([g.any(0) for g in groups])
        return out.reshape(t, h, sc, w, sc).any(axis=(2, 4))

    def outpaint(self, video: Any, *, margins: tuple[int, int, int, int] | None = None, prompt: str | None = None,
                 negative_prompt: str | None = None, seed: int | None = 0, **kw) -> Result:
        """Extend a video beyond its borders. `margins` (top, right, bottom, left) in output pixels:
        the input is centre-cropped to the output square and those borders are regenerated. Without
        margins the whole input is fitted inside the square (letterbox or pillarbox by its aspect)
        and the empty borders are generated (a non-square input becomes square)."""
        notes: list[str] = []
        S, sc = self.settings.size, self.vt.config.spatial_compression
        t, h, w = self.latent
        if margins is not None:
            v = self._video(video, "video", notes, frames=self.settings.frames)
            top, right, bottom, left = (int(m) for m in margins)
            if min(top, right, bottom, left) < 0 or top + bottom >= S or left + right >= S or top + right + bottom + left == 0:
                raise InputError(f"margins: (top, right, bottom, left) >= 0 pixels, not all 0, leaving part of the "
                                 f"{S}x{S} frame, got {margins}")
            keep = torch.ones(t, h, w, dtype=torch.bool)
            keep[:, : -(-top // sc)] = False
            keep[:, h - (-(-bottom // sc)) :] = False
            keep[:, :, : -(-left // sc)] = False
            keep[:, :, w - (-(-right // sc)) :] = False
        else:
            from videopoet.data.media import _resize

            raw = self._video(video, "video", notes, frames=self.settings.frames, fit=True)
            H, W = raw.shape[1:3]
            if H == W:
                raise InputError("outpaint: a square input needs margins=(top, right, bottom, left)")
            if W > H:
                nh = max(sc, int(round(S * H / W / sc)) * sc)
                inner, (y, x) = (nh, S), ((S - nh) // sc // 2 * sc, 0)
            else:
                nw = max(sc, int(round(S * W / H / sc)) * sc)
                inner, (y, x) = (S, nw), (0, (S - nw) // sc // 2 * sc)
            v = np.full((len(raw), S, S, 3), 127, np.uint8)
            for i, f in enumerate(raw):
                v[i, y : y + inner[0], x : x + inner[1]] = _resize(f, inner)
            _note(notes, f"video: {W}x{H} fitted inside {S}x{S} at {inner[1]}x{inner[0]}; the borders are generated",
                  self.quiet)
            keep = torch.zeros(t, h, w, dtype=torch.bool)
            keep[:, y // sc : (y + inner[0]) // sc, x // sc : (x + inner[1]) // sc] = True
        return self._masked_task("outpaint", v, keep, prompt, negative_prompt, seed, notes, kw)

    def stylize(self, video: Any, prompt: str, *, structure: str | np.ndarray | None = None, depth_model: str | None = None,
                first_frame: Any = None, negative_prompt: str | None = None, structure_guidance: float | None = None,
                seed: int | None = 0, **kw) -> Result:
        """A new look for a video's motion and shapes: structure (optical flow + depth, or edges)
        from the input, tokenized as a video, + a text prompt (+ an optional first frame).

        structure: a ready structure video (uint8 (T, H, W, 3), see videopoet/data/structure.py) or
        None to compute it: OpenCV flow plus depth from `depth_model` (a local `transformers`
        depth-estimation model directory) or Canny edges when none is given. Guidance drops the
        text (scale `guidance`); structure_guidance > 1 adds a second branch without the
        structure."""
        from videopoet.data.structure import structure_video

        notes: list[str] = []
        v = self._video(video, "video", notes, frames=self.settings.frames)
        if structure is None:
            depth = _depth(v, depth_model) if depth_model else None
            sv, used = structure_video(v, depth=depth)
            _note(notes, f"structure: {used}" + (f" ({depth_model})" if depth_model else ""), self.quiet)
        else:
            sv = self._video(structure, "structure", notes, frames=self.settings.frames)
            _note(notes, "structure: given", self.quiet)
        text = self._text(prompt)
        if text is None:
            raise InputError("prompt: stylize needs a text prompt (the style)")
        inputs = {"text": text, "structure": self.encode_video(sv)}
        if first_frame is not None:
            inputs["first_frame"] = self.encode_video(self._video(first_frame, "first_frame", notes)[:1])[:1]
        drop = ("text",) if structure_guidance is None else ("text", "structure")
        if structure_guidance is not None:
            kw.setdefault("guidance", structure_guidance)
        out = self.generate_codes("stylize", inputs, {"video": self.latent}, frames=self.settings.frames,
                                  uncond_inputs=self._guided(inputs, drop, negative_prompt), seed=seed, **kw)
        return self._result("stylize", out["video"], None, prompt=prompt, seed=seed, notes=notes,
                            tokens={"structure": inputs["structure"]})

    def v2a(self, video: Any, *, seed: int | None = 0, **kw) -> Result:
        """A soundtrack for a silent video; the result holds the input frames and the new audio."""
        notes: list[str] = []
        self._need_audio("v2a")
        v = self._video(video, "video", notes, frames=self.settings.frames)
        codes = self.encode_video(v)
        # the guidance branch drops the video (pipeline.json's task_guidance.v2a, or `guidance`)
        out = self.generate_codes("v2a", {"video": codes}, {"audio": (self.vocab.audio_levels, self.audio_frames)},
                                  uncond_inputs={}, seed=seed, **kw)
        r = self._result("v2a", None, out["audio"], prompt=None, seed=seed, notes=notes, tokens={"input": codes})
        r.frames = v
        return r

    def a2v(self, audio: Any, prompt: str | None = None, *, negative_prompt: str | None = None, seed: int | None = 0,
            **kw) -> Result:
        """Audio (+ text) -> a video for it; the result carries the input audio."""
        notes: list[str] = []
        self._need_audio("a2v")
        wav = self._audio(audio, "audio", notes, self.seconds)
        acodes = self.encode_audio(wav)
        text = self._text(prompt)
        inputs = {"audio": acodes} | ({} if text is None else {"text": text})
        out = self.generate_codes("a2v", inputs, {"video": self.latent}, frames=self.settings.frames,
                                  uncond_inputs=self._guided(inputs, ("text",), negative_prompt),
                                  seed=seed, **kw)
        r = self._result("a2v", out["video"], None, prompt=prompt, seed=seed, notes=notes, tokens={"input_audio": acodes})
        r.audio = wav
        return r

    def avcont(self, video: Any, *, audio: Any = None, seed: int | None = 0, **kw) -> Result:
        """A first frame and the start of its sound -> the rest of the clip, picture and sound.
        video: a file with sound (or frames + `audio`); its first frame and first fifth of the
        clip's audio are the prompt (as in training)."""
        notes: list[str] = []
        self._need_audio("avcont")
        v = self._video(video, "video", notes)
        wav = self._audio(audio if audio is not None else video, "audio", notes, self.seconds)
        first = self.encode_video(v[:1])[:1]
        a = self.encode_audio(wav)
        f0 = max(1, a.shape[1] // 5)
        out = self.generate_codes("avcont", {"first_frame": first, "audio": a[:, :f0]},
                                  {"video": self.latent, "audio": (self.vocab.audio_levels, a.shape[1] - f0)},
                                  frames=self.settings.frames, seed=seed, **kw)
        full_audio = torch.cat([a[:, :f0], out["audio"]], dim=1)
        return self._result("avcont", out["video"], full_audio, prompt=None, seed=seed, notes=notes)

    def _need_audio(self, task: str) -> None:
        if self.at is None or not self.vocab.audio_levels:
            raise InputError(f"{task}: this pipeline has no audio codec")

    def run(self, task: str, **kwargs) -> Result:
        """Any task by name (DESIGN.md's names; `continue` is frame prediction)."""
        fn: dict[str, Callable[..., Result]] = {
            "t2v": self.t2v, "t2i": self.t2i, "i2v": self.i2v, "continue": self.continue_video,
            "inpaint": self.inpaint, "outpaint": self.outpaint, "stylize": self.stylize, "v2a": self.v2a,
            "a2v": self.a2v, "avcont": self.avcont,
        }  # fmt: skip
        if task not in fn:
            raise InputError(f"task {task!r}: unknown (known: {', '.join(fn)}, extend)")
        return fn[task](**kwargs)


def _depth(frames: np.ndarray, model_dir: str) -> np.ndarray:
    """Per-frame depth in [0, 1] (1 = far) from a local `transformers` depth-estimation model."""
    p = Path(model_dir)
    if not p.is_dir():
        raise InputError(f"--depth-model {p}: not a directory (a local transformers depth model; nothing is downloaded)")
    try:
        from transformers import pipeline as hf_pipeline
    except ImportError:
        raise InputError("--depth-model: needs the `transformers` package (pip install transformers)") from None
    from PIL import Image

    est = hf_pipeline("depth-estimation", model=str(p), device="cpu")
    out = []
    for f in frames:
        d = np.asarray(est(Image.fromarray(f))["predicted_depth"], np.float32).squeeze()
        d = np.asarray(Image.fromarray(d).resize((f.shape[1], f.shape[0]), Image.BILINEAR))
        d = (d - d.min()) / max(1e-6, float(d.max() - d.min()))
        out.append(1.0 - d)  # these models predict nearness (inverse depth): 1 = far here
    return np.stack(out)
