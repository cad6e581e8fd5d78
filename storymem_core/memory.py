"""The memory bank: the keyframes a new shot is conditioned on, as an immutable value.

ComfyUI caches node outputs and a story can re-roll any shot, so a bank is never changed in place:
`add`, `window`, `pin`, `unpin` and `remove` return a new bank and leave the old one as it was.

Window rule (the reference's sliding window, `bank[:fix] + bank[-(max - fix):]` once the bank holds
more than `max_size`), generalised for artist pins:
- the first `fixed` keyframes and every pinned keyframe are *protected* and always kept;
- the remaining `max_size - protected` slots go to the most recent unprotected keyframes;
- order is preserved.
Edge case `fixed == max_size`: the reference slices `bank[-0:]` (the whole list) there and feeds
duplicated frames to the model; here the bank keeps its first `max_size` keyframes and takes no new
ones (all slots are fixed). `fixed > max_size` is rejected.

Its files (a folder of PNGs and `bank.json`) and its picture are `bank_files.py`'s.
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field, replace
from types import MappingProxyType
from typing import Iterable, Mapping, Sequence

import torch

from .errors import MemoryBankError

SOURCES = ("generated", "reference")


def _checked_image(image: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.dim() != 3 or image.shape[-1] != 3:
        shown = f"{image.dtype} {tuple(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
        raise MemoryBankError(f"{what} must be a uint8 image [H, W, 3], got {shown}: convert it with "
                              "storymem_core.video.")
    return image.detach().cpu().clone().contiguous()


@dataclass(frozen=True, eq=False)
class Keyframe:
    """One memory image and where it came from; `image` returns a copy, so the stored pixels never change."""

    image: InitVar[torch.Tensor]
    shot: int = -1
    frame_index: int = -1
    scores: Mapping[str, float] = field(default_factory=dict)
    pinned: bool = False
    source: str = "generated"
    _pixels: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self, image: torch.Tensor) -> None:
        if self.source not in SOURCES:
            raise MemoryBankError(f"keyframe source '{self.source}' is unknown: use one of {', '.join(SOURCES)}.")
        object.__setattr__(self, "_pixels", _checked_image(image, "a keyframe image"))
        object.__setattr__(self, "scores", MappingProxyType({str(k): float(v) for k, v in self.scores.items()}))

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) without copying the pixels."""
        return tuple(self._pixels.shape[:2])

    def __reduce__(self):
        # pickle / deepcopy through the constructor: a mappingproxy cannot be pickled
        return (Keyframe, (self._pixels, self.shot, self.frame_index, dict(self.scores), self.pinned, self.source))

    def with_pinned(self, pinned: bool) -> Keyframe:
        return replace(self, image=self._pixels, pinned=pinned)


# `image` is an InitVar (the constructor argument); reading it back gives a copy of the private pixels.
Keyframe.image = property(lambda self: self._pixels.clone(), doc="uint8 [H, W, 3], a copy.")


@dataclass(frozen=True)
class MemoryBank:
    """Keyframes in story order, at most `max_size` after `window()`, the first `fixed` always kept."""

    keyframes: tuple[Keyframe, ...] = ()
    max_size: int = 10
    fixed: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "keyframes", tuple(self.keyframes))
        if not all(isinstance(k, Keyframe) for k in self.keyframes):
            raise MemoryBankError("a memory bank holds Keyframe values only: wrap images with MemoryBank.from_images.")
        if self.max_size < 1:
            raise MemoryBankError(f"max_size = {self.max_size} must be at least 1: use e.g. 10.")
        if not 0 <= self.fixed <= self.max_size:
            raise MemoryBankError(f"fixed = {self.fixed} must be between 0 and max_size = {self.max_size}: lower it.")

    @classmethod
    def from_images(
        cls,
        images: torch.Tensor | Sequence[torch.Tensor],
        source: str = "reference",
        shot: int = -1,
        max_size: int = 10,
        fixed: int = 3,
    ) -> MemoryBank:
        """A bank of the user's images (MR2V references), in the order given, windowed."""
        keyframes = [Keyframe(image, shot=shot, frame_index=i, source=source) for i, image in enumerate(images)]
        return cls((), max_size, fixed).add(keyframes)

    def __len__(self) -> int:
        return len(self.keyframes)

    def protected_indices(self) -> frozenset[int]:
        """Positions the window never drops: the first `fixed` and the pinned ones."""
        return frozenset(range(min(self.fixed, len(self)))) | {i for i, k in enumerate(self.keyframes) if k.pinned}

    def add(self, keyframes: Iterable[Keyframe]) -> MemoryBank:
        """A new bank with `keyframes` appended, then windowed."""
        return replace(self, keyframes=self.keyframes + tuple(keyframes)).window()

    def window(self) -> MemoryBank:
        """A new bank of at most `max_size`: protected keyframes plus the most recent others (module doc)."""
        protected = self.protected_indices()
        if len(protected) > self.max_size:
            raise MemoryBankError(
                f"{len(protected)} keyframes are fixed or pinned but the bank holds at most {self.max_size}: "
                "unpin some or raise max_size."
            )
        if len(self) <= self.max_size:
            return replace(self)
        others = [i for i in range(len(self)) if i not in protected]
        recent = others[len(others) - (self.max_size - len(protected)) :]
        kept = sorted(protected.union(recent))
        return replace(self, keyframes=tuple(self.keyframes[i] for i in kept))

    def _position(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise MemoryBankError(f"keyframe {index} does not exist: the bank holds {len(self)} (0 to "
                                  f"{len(self) - 1}).")
        return index % len(self)

    def _with(self, index: int, keyframe: Keyframe | None) -> MemoryBank:
        position = self._position(index)
        middle = () if keyframe is None else (keyframe,)
        return replace(self, keyframes=self.keyframes[:position] + middle + self.keyframes[position + 1 :])

    def pin(self, index: int) -> MemoryBank:
        """A new bank where keyframe `index` is always kept by the window."""
        return self._with(index, self.keyframes[self._position(index)].with_pinned(True))

    def unpin(self, index: int) -> MemoryBank:
        return self._with(index, self.keyframes[self._position(index)].with_pinned(False))

    def remove(self, index: int) -> MemoryBank:
        """A new bank without keyframe `index` (later keyframes move up, into fixed slots too)."""
        return self._with(index, None)

    def image_list(self) -> list[torch.Tensor]:
        """Copies of the images, uint8 [H, W, 3] each (sizes may differ, e.g. reference images)."""
        return [k.image for k in self.keyframes]

    def images(self) -> torch.Tensor:
        """The images stacked, uint8 [M, H, W, 3]; an empty bank gives [0, 0, 0, 3]."""
        if not self.keyframes:
            return torch.empty(0, 0, 0, 3, dtype=torch.uint8)
        sizes = {k.size for k in self.keyframes}
        if len(sizes) > 1:
            raise MemoryBankError(f"the bank's images have {len(sizes)} different sizes and cannot be stacked: use "
                                  "image_list().")
        return torch.stack([k._pixels for k in self.keyframes])
