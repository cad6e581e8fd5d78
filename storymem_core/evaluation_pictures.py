"""Pictures of a story evaluation, drawn with Pillow: the shot x shot consistency heatmap, the per-shot score
chart and the contact sheet of the frames each score was read from. Several evaluations (one story made with
several settings) are drawn side by side on one colour scale, so their pictures compare at a glance."""

from __future__ import annotations

from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from .evaluation import StoryEvaluation

# viridis at five stops: dark blue (least similar) to yellow (identical), readable in greyscale
COLOUR_STOPS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
SERIES_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))
CUT_COLOUR = (230, 30, 30)
TEXT = (20, 20, 20)
PAD = 8
LINE = 14  # height of one line of FONT, with spacing
FONT_SIZE = 11
CHART_METRICS = (("aesthetic", "aesthetic (LAION head)"), ("prompt_following", "prompt following (CLIP text-image)"),
                 ("consistency", "consistency to the other shots"), ("smoothness", "smoothness"))


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's own scalable font where Pillow has FreeType (its bitmap font runs words together), else the bitmap."""
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except (ImportError, OSError, TypeError):  # Pillow without FreeType, or older than 10.1
        return ImageFont.load_default()


FONT = _font()


def number(value: float, digits: int = 2) -> str:
    """`value` to `digits` places, never "-0.00": a tiny negative score rounds to an unsigned zero."""
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def colour(value: float, low: float, high: float) -> tuple[int, int, int]:
    """`value` on the colour scale from `low` to `high` (clipped)."""
    position = 0.0 if high <= low else min(1.0, max(0.0, (value - low) / (high - low))) * (len(COLOUR_STOPS) - 1)
    below = min(int(position), len(COLOUR_STOPS) - 2)
    t = position - below
    return tuple(round(a + (b - a) * t) for a, b in zip(COLOUR_STOPS[below], COLOUR_STOPS[below + 1]))


def similarity_scale(evaluations: Sequence[StoryEvaluation]) -> tuple[float, float]:
    """The shared colour scale: from the lowest similarity of any story (rounded down to 0.1) to 1."""
    low = min(e.similarity.min().item() for e in evaluations)
    return min(float(int(low * 10 - (low < 0))) / 10, 0.9), 1.0


def _panel(evaluation: StoryEvaluation, title: str, low: float, high: float) -> Image.Image:
    count = len(evaluation.shots)
    cell = max(12, min(44, 440 // count))
    left, top = 6 * 6 + PAD, 2 * LINE + PAD + 10
    size = cell * count
    image = Image.new("RGB", (left + size + PAD, top + size + PAD), "white")
    draw = ImageDraw.Draw(image)
    draw.font = FONT
    draw.text((PAD, PAD // 2), title, fill=TEXT)
    for i in range(count):
        for j in range(count):
            value = evaluation.similarity[i, j].item()
            fill = colour(value, low, high)
            x, y = left + j * cell, top + i * cell
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=fill)
            if cell >= 30:
                draw.text((x + 4, y + cell // 2 - 5), number(value), fill="black" if sum(fill) > 380 else "white")
        draw.text((left + i * cell + cell // 2 - 3, top - LINE - 6), str(i + 1), fill=TEXT)
        draw.text((PAD, top + i * cell + cell // 2 - 5), str(i + 1), fill=TEXT)
    for i, scores in enumerate(evaluation.shots):
        edge = i * cell
        if i > 0 and scores.shot.scene_num != evaluation.shots[i - 1].shot.scene_num:  # a new scene: lines across
            draw.line((left + edge, top, left + edge, top + size), fill="white", width=3)
            draw.line((left, top + edge, left + size, top + edge), fill="white", width=3)
        if scores.shot.cut:  # a cut before this shot: red ticks on both axes
            draw.line((left + edge, top - 8, left + edge, top - 1), fill=CUT_COLOUR, width=3)
            draw.line((left - 8, top + edge, left - 1, top + edge), fill=CUT_COLOUR, width=3)
    return image


def _colour_bar(low: float, high: float, height: int) -> Image.Image:
    image = Image.new("RGB", (70, height), "white")
    draw = ImageDraw.Draw(image)
    draw.font = FONT
    top, bottom = 2 * LINE + PAD + 10, height - PAD
    for y in range(top, bottom):
        value = high - (high - low) * (y - top) / max(1, bottom - top - 1)
        draw.line((PAD, y, PAD + 16, y), fill=colour(value, low, high))
    draw.text((PAD + 20, top - 5), number(high), fill=TEXT)
    draw.text((PAD + 20, bottom - 10), number(low), fill=TEXT)
    return image


def _row(images: Sequence[Image.Image], footer: Sequence[str] = ()) -> Image.Image:
    """Images side by side, top-aligned, with lines of text under them."""
    width = max([sum(i.width for i in images), *(6 * len(line) + 2 * PAD for line in footer)])
    height = max(i.height for i in images) + (len(footer) * LINE + PAD if footer else 0)
    sheet = Image.new("RGB", (width, height), "white")
    x = 0
    for image in images:
        sheet.paste(image, (x, 0))
        x += image.width
    draw = ImageDraw.Draw(sheet)
    draw.font = FONT
    for n, line in enumerate(footer):
        draw.text((PAD, height - (len(footer) - n) * LINE - PAD // 2), line, fill=TEXT)
    return sheet


def heatmap(evaluations: Sequence[StoryEvaluation], titles: Sequence[str]) -> Image.Image:
    """Shot x shot CLIP similarity of each story, side by side on one colour scale; cuts and scenes marked."""
    low, high = similarity_scale(evaluations)
    panels = [_panel(e, title, low, high) for e, title in zip(evaluations, titles)]
    bar = _colour_bar(low, high, max(p.height for p in panels))
    legend = ["cell: CLIP similarity", "of two shots", "red tick: cut before", "white line: new scene"]
    return _row([*panels, bar], legend)


def _bounds(values: Sequence[float]) -> tuple[float, float]:
    low, high = min(0.0, *values), max(0.0, *values)
    return low, high + (high - low) * 0.15 or 1.0


def score_chart(evaluations: Sequence[StoryEvaluation], titles: Sequence[str]) -> Image.Image:
    """One bar panel per score, a bar per shot (a group of bars per shot when comparing stories); a value per bar."""
    count = max(len(e.shots) for e in evaluations)
    group = len(evaluations)
    bar_width = max(8, min(36, 420 // (count * group)))
    plot_height, left = 110, 8 * 6
    width = left + count * (group * bar_width + PAD) + PAD
    shot_rows = [e.to_json()["shots"] for e in evaluations]
    panels = []
    for key, label in CHART_METRICS:
        values = [[shot[key] for shot in rows] for rows in shot_rows]
        present = [v for series in values for v in series if v is not None]
        panel = Image.new("RGB", (width, plot_height + 3 * LINE + PAD), "white")
        draw = ImageDraw.Draw(panel)
        draw.font = FONT
        draw.text((PAD, 2), label, fill=TEXT)
        if not present:
            draw.text((PAD, LINE + PAD), "not measured", fill=TEXT)
            panels.append(panel)
            continue
        low, high = _bounds(present)
        top = LINE + PAD

        def y_of(value: float) -> int:
            return round(top + plot_height * (high - value) / (high - low))

        zero = y_of(0.0)
        draw.line((left - 2, zero, width - PAD, zero), fill=(120, 120, 120))
        draw.text((PAD, top - 4), number(high), fill=TEXT)
        draw.text((PAD, top + plot_height - 8), number(low), fill=TEXT)
        for shot in range(count):
            x0 = left + shot * (group * bar_width + PAD)
            for series, shot_values in enumerate(values):
                if shot >= len(shot_values) or shot_values[shot] is None:
                    continue
                value = shot_values[shot]
                x = x0 + series * bar_width
                fill = SERIES_COLOURS[series % len(SERIES_COLOURS)]
                draw.rectangle((x, min(zero, y_of(value)), x + bar_width - 2, max(zero, y_of(value))), fill=fill)
                if bar_width >= 26:
                    draw.text((x, min(zero, y_of(value)) - LINE), number(value), fill=TEXT)
            draw.text((x0 + (group * bar_width) // 2 - 3, top + plot_height + 4), str(shot + 1), fill=TEXT)
        panels.append(panel)
    legend = Image.new("RGB", (width, (LINE + 2) * (group + 1) + PAD), "white")
    draw = ImageDraw.Draw(legend)
    draw.font = FONT
    for series, title in enumerate(titles):
        y = PAD // 2 + series * (LINE + 2)
        draw.rectangle((PAD, y + 1, PAD + 10, y + 10), fill=SERIES_COLOURS[series % len(SERIES_COLOURS)])
        draw.text((PAD + 16, y), title, fill=TEXT)
    draw.text((PAD, PAD // 2 + group * (LINE + 2)), "bars by shot number", fill=TEXT)
    return _column([legend, *panels])


def _column(images: Sequence[Image.Image]) -> Image.Image:
    sheet = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images)), "white")
    y = 0
    for image in images:
        sheet.paste(image, (0, y))
        y += image.height
    return sheet


def contact_sheet(evaluation: StoryEvaluation, title: str) -> Image.Image:
    """A row per shot: its label and scores, then the sampled frames every score was read from."""
    label_width = 30 * 6
    heading = Image.new("RGB", (label_width, LINE + PAD), "white")
    ImageDraw.Draw(heading).text((PAD, PAD // 2), title, fill=TEXT, font=FONT)
    rows = [heading]
    for index, scores in enumerate(evaluation.shots):
        label = Image.new("RGB", (label_width, max(t.height for t in scores.thumbnails) + PAD), "white")
        draw = ImageDraw.Draw(label)
        draw.font = FONT
        shot = scores.shot
        lines = [f"shot {shot.index + 1}  scene {shot.scene_num}  {'cut' if shot.cut else 'continues'}",
                 f"frames {', '.join(str(i) for i in scores.frame_indices)}"[:29],
                 "aesthetic " + ("-" if scores.aesthetic is None else number(scores.aesthetic)),
                 f"prompt {number(scores.prompt_following, 3)}"]
        consistency = evaluation.shot_consistency(index)
        if consistency is not None:
            lines.append(f"consistency {number(consistency, 3)}")
        for n, line in enumerate(lines):
            draw.text((PAD, PAD // 2 + n * LINE), line, fill=TEXT)
        rows.append(_row([label, *scores.thumbnails]))
    return _column(rows)
