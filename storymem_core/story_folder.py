"""A story's output folder and its resume contract: what is finished, what made it, and what may continue it.

A shot is finished once its bank folder exists (written last, atomically) beside its video. The folder
records what its shots were made with: the memory options and references (`memory_settings.json`) and the
script, size, frame count and memory positions (`story_record.json`). A plain re-run continues only with the same;
`--from-shot N` may change what shot N and later are made with, as long as the shots it keeps stay what they were
(the same script up to N and, unless N is 1, the same size and memory positions: a film never mixes sizes or
placements). A folder holding files that are none of ours is never written into.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .bank_files import load_bank
from .choices import DEFAULT_MEMORY_POSITIONS, MemoryPositions
from .errors import StoryFolderError
from .files import WRITE_CHECK_PREFIX, writable_folder_check, write_json
from .folder_lock import LOCK_FILE
from .memory import MemoryBank
from .safe_files import unopenable
from .story import Shot, Story, story_json


@dataclass
class StoryFolder:
    """Where a story's artefacts live; shot numbers in file names are 1-based like the script's."""

    root: Path

    def video(self, shot: int) -> Path:
        return self.root / "shots" / f"shot_{shot + 1:03d}.mp4"

    def tail(self, shot: int) -> Path:
        return self.root / "shots" / f"shot_{shot + 1:03d}_last_frames"

    def bank(self, shot: int) -> Path:
        """The bank after `shot`; shot -1 is the bank the story starts with."""
        return self.root / "banks" / ("initial" if shot < 0 else f"after_shot_{shot + 1:03d}")

    @property
    def film(self) -> Path:
        return self.root / "film.mp4"

    @property
    def contact_sheet(self) -> Path:
        return self.root / "memory.png"

    @property
    def memory_settings(self) -> Path:
        return self.root / "memory_settings.json"

    @property
    def record(self) -> Path:
        return self.root / "story_record.json"

    @property
    def script(self) -> Path:
        """The script the made shots come from, kept with the record (`evaluate` reads it); not story.json, which may
        be the user's own script kept in the folder."""
        return self.root / "script.json"

    def is_finished(self, shot: int) -> bool:
        return self.bank(shot).is_dir() and self.video(shot).is_file()

    def is_ours(self) -> bool:
        """Empty (but for a writer's lock and its writability probe, which another rank under torchrun may list),
        or started by a story run (every run records its settings before its first shot's files)."""
        return not any(p.name != LOCK_FILE and not p.name.startswith(WRITE_CHECK_PREFIX) for p in self.root.iterdir()) \
            or any(p.exists() for p in (self.record, self.memory_settings, self.bank(-1)))

    def film_is_current(self, shots: tuple[Shot, ...]) -> bool:
        """The film exists and is newer than every shot in it, so a run that made no shot need not rewrite it."""
        if not self.film.is_file():
            return False
        film_time = self.film.stat().st_mtime_ns
        return all(self.video(s.index).stat().st_mtime_ns < film_time for s in shots)


def check_output_folder(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Refuse, before anything loads, an output folder that cannot be one: a file, a device, a path under a file,
    a broken link or a place this user cannot write. Creates nothing."""
    path = Path(path).expanduser()
    try:
        _check_writable_folder(path, flag)
    except OSError as error:  # a name too long, a component not searchable, ...
        raise StoryFolderError(f"{flag} {path} cannot be used ({error.strerror}): choose another folder "
                               "path.") from None
    return path


def _check_writable_folder(path: Path, flag: str) -> None:
    if os.path.lexists(path) and not path.exists():
        raise StoryFolderError(f"{flag} {path} is a broken link (or a link loop): point it at a folder, or remove the "
                               "link.")
    if path.exists() and not path.is_dir():
        raise StoryFolderError(f"{flag} {path} is a file, not a folder: give a folder path (it is created when "
                               "missing).")
    existing = path if path.exists() else next(parent for parent in path.parents if parent.exists())
    if not existing.is_dir():
        raise StoryFolderError(f"{flag} {path} lies under {existing}, which is a file: choose a folder path.")
    try:  # the only honest test of writability (root ignores modes; /proc and read-only mounts refuse)
        writable_folder_check(existing)
    except OSError as error:
        raise StoryFolderError(
            f"{flag} {path} cannot be written ({error.strerror}): choose a folder you can write to.") from None


def _sha256(images: list[torch.Tensor]) -> tuple[str, ...]:
    return tuple(hashlib.sha256(str(tuple(image.shape)).encode() + image.numpy().tobytes()).hexdigest()
                 for image in images)


def shot_digests(story: Story) -> tuple[str, ...]:
    """One hash per shot of what makes it (prompt, cut, scene), so an edit is found at the first shot it changes."""
    return tuple(hashlib.sha256(json.dumps([s.prompt, s.cut, s.scene_num, s.first_frame_prompt]).encode()).hexdigest()
                 for s in story.shots)


@dataclass(frozen=True)
class MemorySettings:
    """What a story's memory is made with, recorded in its folder so that a re-run with other values is refused
    instead of continuing the shots made with these."""

    max_memory: int
    fixed_memory: int
    reference_sha256: tuple[str, ...]  # of each reference image's pixels, so the images themselves need not be kept
    ablations: tuple[str, ...] = ()  # the paper's ablations the keyframes were chosen with (none before recorded)

    @classmethod
    def of(cls, max_memory: int, fixed_memory: int, references: list[torch.Tensor],
           ablations: tuple[str, ...] = ()) -> MemorySettings:
        return cls(max_memory, fixed_memory, _sha256(references), tuple(ablations))

    @classmethod
    def of_bank(cls, initial: MemoryBank) -> MemorySettings:
        """A folder from before settings were recorded: every shot was made with its initial bank's."""
        return cls(initial.max_size, initial.fixed, _sha256(initial.image_list()))

    @classmethod
    def load(cls, folder: StoryFolder) -> MemorySettings | None:
        """The settings recorded in the folder, None where there are none."""
        fields = _read_json(folder.memory_settings)
        if fields is None:
            return None
        try:
            return cls(int(fields["max_memory"]), int(fields["fixed_memory"]),
                       tuple(str(d) for d in fields["reference_sha256"]),
                       tuple(str(a) for a in fields.get("ablations", ())))
        except (ValueError, KeyError, TypeError) as error:
            raise _unreadable(folder.memory_settings, error) from None


# the placement of every story made before placements were recorded (the first release's numbering was the default)
UNRECORDED_PLACEMENT = MemoryPositions.FIRST_RELEASE


@dataclass(frozen=True)
class StoryRecord:
    """Which script, size, frame count and memory positions a story folder's shots are made with."""

    shot_sha256: tuple[str, ...]  # of every shot of the script; only the finished ones bind a re-run
    size_wh: tuple[int, int]
    frames: int
    memory_positions: str = DEFAULT_MEMORY_POSITIONS

    @classmethod
    def load(cls, folder: StoryFolder) -> StoryRecord | None:
        fields = _read_json(folder.record)
        if fields is None:
            return None
        try:
            width, height = (int(v) for v in fields["size_wh"])
            return cls(tuple(str(d) for d in fields["shot_sha256"]), (width, height), int(fields["frames"]),
                       str(fields.get("memory_positions", UNRECORDED_PLACEMENT)))
        except (ValueError, KeyError, TypeError) as error:
            raise _unreadable(folder.record, error) from None

    def continues(self, recorded: StoryRecord, shots: int) -> bool:
        """Shots 1 to `shots` made under `recorded` are what this run would make of them."""
        made_as = (self.size_wh, self.frames, self.memory_positions)
        return made_as == (recorded.size_wh, recorded.frames, recorded.memory_positions) and \
            self.shot_sha256[:shots] == recorded.shot_sha256[:shots] and len(recorded.shot_sha256) >= shots


def keep_script(folder: StoryFolder, story: Story) -> None:
    """Keep `story` as the script of a folder whose every shot it made (`evaluate` reads it), unless it is kept
    already: written only once the story is whole, so a run that stops leaves the script of the last whole story."""
    script = story_json(story)
    try:
        kept = _read_json(folder.script)
    except StoryFolderError:  # damaged: replaced
        kept = None
    if kept != script:
        write_json(script, folder.script)


def first_shot_made_otherwise(folder: StoryFolder, story: Story) -> int | None:
    """The first finished shot of `folder` that its record says was made from another prompt or cut than `story`'s;
    None where they all agree (or the folder keeps no record)."""
    recorded = StoryRecord.load(folder)
    if recorded is None:
        return None
    digests = shot_digests(story)
    made = (i for i in range(min(len(digests), len(recorded.shot_sha256))) if folder.is_finished(i))
    return next((i for i in made if digests[i] != recorded.shot_sha256[i]), None)


def story_placement(out_dir: str | os.PathLike) -> str | None:
    """The memory positions the story in `out_dir` was made with; None where no shot is made yet (a new story)."""
    folder = StoryFolder(Path(out_dir))
    try:
        if not folder.is_finished(0):
            return None
    except OSError:  # not a folder one can read: check_output_folder says why
        return None
    recorded = StoryRecord.load(folder)
    return UNRECORDED_PLACEMENT if recorded is None else recorded.memory_positions


def story_folder_name(story: Story, settings: dict, sources: list[str]) -> str:
    """The Story Runner's folder for a story: `<safe story name>-<10 hex digits>`, a digest of the story, its
    options (`settings`, as `asdict` gives them) and `sources` (models, LoRAs, references), so other settings get a
    fresh folder.

    Folders made before are found by these names: the digest (sha1 of this JSON) must not change, so the first-release
    placement is left out as it was before placements were recorded, and no ablation as before ablations were options.
    """
    settings = dict(settings)
    if settings["memory_positions"] == UNRECORDED_PLACEMENT:
        del settings["memory_positions"]
    if not settings.get("ablations", True):
        del settings["ablations"]
    fingerprint = json.dumps([asdict(story), settings, sources], sort_keys=True, default=str)
    safe_name = "".join(c if c.isalnum() or c in "-_" else "_" for c in story.name)[:60] or "story"
    return f"{safe_name}-{hashlib.sha1(fingerprint.encode()).hexdigest()[:10]}"


def reference_digest(references: tuple[torch.Tensor, ...]) -> str:
    """The sha1 of the reference images' pixels as one batch ("" without references), for `story_folder_name`."""
    if not references:
        return ""
    digest = hashlib.sha1()
    for image in references:
        digest.update(image.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
    except OSError as failure:
        raise unopenable(StoryFolderError, "record file", path, failure) from None
    except (ValueError, UnicodeDecodeError) as error:
        raise _unreadable(path, error) from None
    if not isinstance(fields, dict):
        raise _unreadable(path, "not an object")
    return fields


def _unreadable(path: Path, error: object) -> StoryFolderError:
    return StoryFolderError(f"{path} is not a valid record file ({error}): delete it and re-run with the options the "
                            "story was started with.")


@dataclass(frozen=True)
class FolderState:
    """What a run records in the folder before it saves its first shot; written only where it changed, so a resumed
    story leaves the files (and their times) as they were."""

    memory: MemorySettings
    record: StoryRecord

    def save(self, folder: StoryFolder, shot_index: int) -> None:
        """Before shot `shot_index` is saved. The record is kept while it describes every shot up to this one, so shots
        added to the script, or a run that fails while saving, leave it as it was."""
        old_record = StoryRecord.load(folder)
        if old_record is None or not self.record.continues(old_record, shot_index + 1):
            write_json(asdict(self.record), folder.record)
        if MemorySettings.load(folder) != self.memory:
            write_json(asdict(self.memory), folder.memory_settings)


def check_story_folder(out_dir: str | os.PathLike, story: Story, size_wh: tuple[int, int], frames: int,
                       max_memory: int, fixed_memory: int, references: list[torch.Tensor],
                       from_shot: int | None = None,
                       memory_positions: str = DEFAULT_MEMORY_POSITIONS,
                       ablations: tuple[str, ...] = ()) -> FolderState:
    """Refuse, before anything loads or is written, a run the folder cannot take: a folder that is not a story
    folder, or a started story this run would not continue (another script, size, frame count, memory positions,
    memory options or references on a plain re-run; a change to a shot `from_shot` keeps). Returns what this run
    records.

    `references` are the images the memory starts from as given (MR2V), empty for a T2V story; `from_shot` is 0-based.
    """
    folder = StoryFolder(check_output_folder(out_dir))
    state = FolderState(MemorySettings.of(max_memory, fixed_memory, references, ablations),
                        StoryRecord(shot_digests(story), size_wh, frames, memory_positions))
    if not folder.root.is_dir():
        return state
    if not folder.is_ours():
        raise StoryFolderError(f"--out {folder.root} holds files that are not a StoryMem story: choose a new or empty "
                               "folder (a story is never written over other files).")
    where = f"the story in {folder.root}"
    _check_record(folder, state.record, where, from_shot)
    _check_placement(folder, memory_positions, where, from_shot)
    _check_memory(folder, state.memory, max_memory, fixed_memory, references, where, from_shot)
    pending = pending_shots(story, folder.root, from_shot)
    if pending and pending[0].index > 0:
        load_bank(folder.bank(pending[0].index - 1))  # a damaged bank is reported before any model loads
    return state


def _check_record(folder: StoryFolder, current: StoryRecord, where: str, from_shot: int | None) -> None:
    recorded = StoryRecord.load(folder)
    if recorded is None:
        return  # a folder from before records: its script and sizes are unknown
    made = next((i for i in range(len(recorded.shot_sha256)) if not folder.is_finished(i)), len(recorded.shot_sha256))
    kept = made if from_shot is None else min(from_shot, made)
    if len(current.shot_sha256) < kept:
        raise StoryFolderError(f"the script has {len(current.shot_sha256)} shot(s) but {where} has {made} made from "
                               "another one: pass the script it was made from, or a new --out folder.")
    changed = next((i for i in range(kept) if recorded.shot_sha256[i] != current.shot_sha256[i]), None)
    if changed is not None:
        raise StoryFolderError(f"the script differs from the one {where} was made from, from shot {changed + 1} on: "
                               f"pass that script to continue it, --from-shot {changed + 1} to remake shot "
                               f"{changed + 1} and after from this one, or a new --out folder.")
    if recorded.size_wh != current.size_wh and from_shot != 0:
        old, new = ("x".join(map(str, wh)) for wh in (recorded.size_wh, current.size_wh))
        raise StoryFolderError(f"--size {new} differs from the {old} {where} was made at, and a film never mixes "
                               f"sizes: pass --size {old} to continue it, --from-shot 1 to remake every shot at the "
                               "new size, or a new --out folder.")
    if recorded.frames != current.frames and from_shot is None:
        raise StoryFolderError(f"--frames {current.frames} differs from the {recorded.frames} {where} was made with: "
                               f"pass --frames {recorded.frames} to continue it, --from-shot N to remake shot N and "
                               "after, or a new --out folder.")


def _check_placement(folder: StoryFolder, current: str, where: str, from_shot: int | None) -> None:
    recorded = story_placement(folder.root)
    if recorded is None or recorded == current or from_shot == 0:
        return
    raise StoryFolderError(f"--memory-positions {current} differs from the {recorded} {where} was made with, and a "
                           f"film never mixes placements: pass --memory-positions {recorded} to continue it, "
                           f"--from-shot 1 to remake every shot with {current}, or a new --out folder.")


def _check_memory(folder: StoryFolder, current: MemorySettings, max_memory: int, fixed_memory: int,
                  references: list[torch.Tensor], where: str, from_shot: int | None) -> None:
    recorded = MemorySettings.load(folder)
    if recorded is None and folder.bank(-1).is_dir():
        recorded = MemorySettings.of_bank(load_bank(folder.bank(-1)))
        # such a folder's initial bank held the references as given (not fitted), windowed to the limits
        current = MemorySettings.of_bank(MemoryBank.from_images(references, max_size=max_memory, fixed=fixed_memory))
    if recorded is None or recorded == current:
        return
    if recorded.reference_sha256 != current.reference_sha256 and from_shot != 0:
        raise StoryFolderError(f"the --reference images differ from those {where} was started with: pass the same "
                               "ones to continue it, --from-shot 1 to remake it from the new ones, or a new --out "
                               "folder.")
    if from_shot is not None:
        return  # --from-shot remakes its shots with the new memory options
    if recorded.ablations != current.ablations:
        old, new = (" ".join(f"--{a}" for a in flags) or "no ablation flag" for flags in (recorded.ablations,
                                                                                          current.ablations))
        raise StoryFolderError(f"the ablations ({new}) differ from those {where} was made with ({old}): pass the same "
                               "to continue it, --from-shot N to remake shot N and after, or a new --out folder.")
    for flag, old, new in (("--max-memory", recorded.max_memory, current.max_memory),
                           ("--fixed-memory", recorded.fixed_memory, current.fixed_memory)):
        if old != new:
            raise StoryFolderError(f"{flag} {new} differs from the {old} {where} was made with: pass {flag} {old} to "
                                   f"continue it, --from-shot N to remake shot N and after with {new}, or a new --out "
                                   "folder.")


def pending_shots(story: Story, out_dir: str | os.PathLike, from_shot: int | None = None) -> tuple[Shot, ...]:
    """The shots a run will generate: from the first unfinished one (or `from_shot`, 0-based) to the end, since a
    regenerated shot changes the memory of every shot after it."""
    folder = StoryFolder(Path(out_dir))
    for position, shot in enumerate(story.shots):
        if not folder.is_finished(shot.index) or (from_shot is not None and shot.index >= from_shot):
            return story.shots[position:]
    return ()
