"""Memory bank: the reference's window rule, immutability, artist edits, and the folder format."""

from __future__ import annotations

import json
import os

import pytest
import torch
from golden_data import golden_dir
from helpers import frame, indices, keyframes
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from storymem_core.bank_files import BANK_FILE, bank_contact_sheet, load_bank, save_bank
from storymem_core.errors import MemoryBankError
from storymem_core.memory import Keyframe, MemoryBank


def _window_cases():
    path = golden_dir() / "memory_window.json"
    if not path.exists():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"no memory_window.json in {golden_dir()}"))]
    cases = json.loads(path.read_text())["cases"]
    return [pytest.param(c, id=f"n{c['n']}_max{c['max_memory_size']}_fix{c['fix']}") for c in cases]


@pytest.mark.parametrize("case", _window_cases())
def test_window_matches_golden_and_keeps_fixed_slots_when_fix_equals_max(case):
    n, max_size, fix = case["n"], case["max_memory_size"], case["fix"]
    if fix > max_size:
        with pytest.raises(MemoryBankError, match="fixed"):
            MemoryBank(max_size=max_size, fixed=fix)
        return
    bank = MemoryBank(max_size=max_size, fixed=fix).add(keyframes(n))
    if fix < max_size or n <= max_size:
        assert indices(bank) == case["selected"]
    else:  # reference: bank[-0:] is the whole list, so frames repeat; ours: every slot is fixed
        assert len(case["selected"]) > max_size
        assert indices(bank) == list(range(max_size))


def test_window_adding_shot_by_shot_equals_windowing_the_whole_history():
    history = keyframes(23)
    bank = MemoryBank(max_size=8, fixed=3)
    for start in range(0, 23, 3):
        bank = bank.add(history[start : start + 3])
    assert indices(bank) == indices(MemoryBank(max_size=8, fixed=3).add(history)) == [0, 1, 2, 18, 19, 20, 21, 22]


def test_window_keeps_pinned_keyframes_as_fixed():
    bank = MemoryBank(max_size=5, fixed=1).add(keyframes(5)).pin(2)
    bank = bank.add(keyframes(4, start=5))
    assert indices(bank) == [0, 2, 6, 7, 8]
    assert bank.protected_indices() == {0, 1}
    assert indices(bank.unpin(1).add(keyframes(1, start=9))) == [0, 6, 7, 8, 9]


def test_window_refuses_more_pins_than_slots():
    bank = MemoryBank(max_size=3, fixed=1).add(keyframes(3)).pin(1).pin(2)
    assert indices(bank.add(keyframes(1, start=3))) == [0, 1, 2]  # every slot is protected: new ones wait
    with pytest.raises(MemoryBankError, match="unpin some or raise max_size"):
        bank.add([keyframes(1, start=3)[0].with_pinned(True)])


def test_window_remove_moves_later_keyframes_up():
    bank = MemoryBank(max_size=4, fixed=2).add(keyframes(4)).remove(0)
    assert indices(bank) == [1, 2, 3]
    assert indices(bank.add(keyframes(2, start=4))) == [1, 2, 4, 5]
    with pytest.raises(MemoryBankError, match="keyframe 7 does not exist"):
        bank.remove(7)


def test_window_bank_updates_never_change_the_old_bank():
    old = MemoryBank(max_size=4, fixed=1).add(keyframes(4))
    before = (indices(old), old.images().clone(), [k.pinned for k in old.keyframes])
    for new in (old.add(keyframes(3, start=4)), old.pin(3), old.unpin(0), old.remove(1), old.window()):
        assert new is not old
    assert (indices(old), [k.pinned for k in old.keyframes]) == (before[0], before[2])
    assert torch.equal(old.images(), before[1])


def test_window_keyframe_pixels_cannot_be_changed_from_outside():
    pixels = frame(7)
    keyframe = Keyframe(pixels)
    pixels.zero_()
    keyframe.image.zero_()
    MemoryBank().add([keyframe]).images().zero_()
    assert torch.equal(keyframe.image, frame(7))
    with pytest.raises(AttributeError):
        keyframe.shot = 3


def test_window_bank_survives_pickle_and_deepcopy():
    import copy
    import pickle

    bank = MemoryBank(max_size=4, fixed=1).add(
        [Keyframe(frame(3), shot=1, frame_index=9, scores={"quality": 4.5}, pinned=True)]
    )
    for twin in (copy.deepcopy(bank), pickle.loads(pickle.dumps(bank))):
        (a,), (b,) = bank.keyframes, twin.keyframes
        assert torch.equal(a.image, b.image)
        assert (b.shot, b.frame_index, dict(b.scores), b.pinned, twin.max_size, twin.fixed) == (
            1,
            9,
            {"quality": 4.5},
            True,
            4,
            1,
        )


@settings(max_examples=60, deadline=None)
@given(
    max_size=st.integers(1, 8),
    fixed_fraction=st.floats(0, 1),
    batches=st.lists(st.integers(0, 5), max_size=8),
)
def test_window_properties_size_fixed_order_and_immutability(max_size, fixed_fraction, batches):
    fixed = round(fixed_fraction * max_size)
    bank, added, snapshots = MemoryBank(max_size=max_size, fixed=fixed), 0, []
    for count in batches:
        snapshots.append((bank, indices(bank)))
        bank = bank.add(keyframes(count, start=added))
        added += count
        kept = indices(bank)
        assert len(kept) == min(added, max_size)
        assert kept[: min(fixed, added)] == list(range(min(fixed, added)))
        assert kept == sorted(kept)
        if added and fixed < max_size:
            assert kept[-1] == added - 1  # the newest keyframe is always in
    assert all(indices(old) == seen for old, seen in snapshots)


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 9)), max_size=10))
def test_window_properties_pinned_keyframes_survive_adds(steps):
    bank, added = MemoryBank(max_size=6, fixed=2), 0
    for count, pin_at in steps:
        if len(bank) and len(bank.protected_indices()) < bank.max_size:
            bank = bank.pin(pin_at % len(bank))
        pinned = [k.frame_index for k in bank.keyframes if k.pinned]
        bank = bank.add(keyframes(count, start=added))
        added += count
        assert len(bank) <= bank.max_size
        assert set(pinned) <= set(indices(bank))
        assert indices(bank) == sorted(indices(bank))


def test_window_images_stack_only_same_sizes():
    bank = MemoryBank.from_images([frame(1), frame(2, height=8)])
    assert [tuple(image.shape) for image in bank.image_list()] == [(4, 6, 3), (8, 6, 3)]
    with pytest.raises(MemoryBankError, match="use image_list"):
        bank.images()
    assert MemoryBank().images().shape == (0, 0, 0, 3)


def test_window_from_images_marks_references():
    bank = MemoryBank.from_images(torch.stack([frame(1), frame(2)]), max_size=4, fixed=1)
    assert [(k.source, k.shot, k.frame_index) for k in bank.keyframes] == [("reference", -1, 0), ("reference", -1, 1)]
    assert (bank.max_size, bank.fixed) == (4, 1)


def test_window_save_load_round_trip(tmp_path):
    bank = (
        MemoryBank(max_size=6, fixed=2)
        .add(
            [
                Keyframe(
                    torch.randint(0, 256, (5, 7, 3), dtype=torch.uint8),
                    shot=2,
                    frame_index=40,
                    scores={"quality": 5.5, "similarity": 0.25},
                )
            ]
            + keyframes(3)
        )
        .pin(3)
    )
    save_bank(bank, tmp_path / "bank")
    loaded = load_bank(tmp_path / "bank")
    assert (loaded.max_size, loaded.fixed, len(loaded)) == (6, 2, 4)
    for a, b in zip(bank.keyframes, loaded.keyframes):
        assert torch.equal(a.image, b.image)
        assert (a.shot, a.frame_index, dict(a.scores), a.pinned, a.source) == (
            b.shot,
            b.frame_index,
            dict(b.scores),
            b.pinned,
            b.source,
        )


def test_window_save_replaces_a_bank_and_a_failed_save_leaves_it_intact(tmp_path, monkeypatch):
    folder = tmp_path / "bank"
    save_bank(MemoryBank().add(keyframes(5)), folder)
    save_bank(MemoryBank().add(keyframes(2, start=10)), folder)
    assert indices(load_bank(folder)) == [10, 11]
    saved = Image.Image.save

    def fail_on_second(image, path, *args, **kwargs):
        if "keyframe_001.png" in str(path):
            raise OSError("disk full")
        return saved(image, path, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", fail_on_second)
    with pytest.raises(OSError, match="disk full"):
        save_bank(MemoryBank().add(keyframes(3, start=20)), folder)
    assert indices(load_bank(folder)) == [10, 11]
    assert sorted(os.listdir(tmp_path)) == ["bank"]


def test_window_load_names_the_missing_or_corrupt_file(tmp_path):
    folder = save_bank(MemoryBank().add(keyframes(2)), tmp_path / "bank")
    (folder / "keyframe_001.png").write_bytes(b"not a png")
    with pytest.raises(MemoryBankError, match="keyframe_001.png cannot be read"):
        load_bank(folder)
    (folder / "keyframe_001.png").unlink()
    with pytest.raises(MemoryBankError, match="keyframe_001.png is missing"):
        load_bank(folder)
    (folder / BANK_FILE).write_text("{")
    with pytest.raises(MemoryBankError, match="bank.json is not a valid memory bank file"):
        load_bank(folder)
    with pytest.raises(MemoryBankError, match="does not exist"):
        load_bank(tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["../outside.png", "/etc/hostname", "sub/keyframe_000.png", "..", ""])
def test_window_load_reads_keyframes_only_from_the_bank_folder(tmp_path, name):
    folder = save_bank(MemoryBank().add(keyframes(1)), tmp_path / "bank")
    Image.new("RGB", (4, 4)).save(tmp_path / "outside.png")
    manifest = json.loads((folder / BANK_FILE).read_text())
    manifest["keyframes"][0]["file"] = name
    (folder / BANK_FILE).write_text(json.dumps(manifest))
    with pytest.raises(MemoryBankError, match="not a file in the bank's folder"):
        load_bank(folder)


def test_window_load_refuses_more_keyframes_than_max_size(tmp_path):
    folder = save_bank(MemoryBank(max_size=3, fixed=1).add(keyframes(3)), tmp_path / "bank")
    manifest = json.loads((folder / BANK_FILE).read_text())
    manifest["max_size"] = 2
    (folder / BANK_FILE).write_text(json.dumps(manifest))
    with pytest.raises(MemoryBankError, match="lists 3 keyframes but max_size is 2"):
        load_bank(folder)


def test_window_contact_sheet_shows_every_keyframe():
    bank = MemoryBank(max_size=10, fixed=3).add(keyframes(7))
    sheet = bank_contact_sheet(bank, thumb_height=32, columns=5)
    assert sheet.mode == "RGB" and sheet.height > 2 * 32 and sheet.width >= 5 * 48
    assert bank_contact_sheet(MemoryBank()).size[0] > 0
