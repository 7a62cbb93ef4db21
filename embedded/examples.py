"""Write examples/embedded/: prompts and control maps that suit the embedded model, from unseen scenes.

    python -m embedded.examples [folder]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from embedded import world

SHOWN_SIZE = 512  # maps are stored at a detector's usual size; the pipeline resizes them to 64x64
EXAMPLE_SEED = world.EVALUATION_SEED_OFFSET + 900_000

TEXT_PROMPTS = [
    "a red circle on a blue background",
    "a yellow triangle on a purple background",
    "a green square on a white background",
    "a blue circle on a orange background",
    "a person in a red shirt with arms raised on a white background",
]
CONTROL_SCENES = [
    ("edge", "object", {"colour": "orange", "shape": "triangle", "background": "blue"}),
    ("edge", "object", {"colour": "white", "shape": "circle", "background": "green"}),
    ("depth", "object", {"colour": "purple", "shape": "square", "background": "yellow"}),
    ("depth", "object", {"colour": "red", "shape": "circle", "background": "black"}),
    ("pose", "person", {"colour": "green", "pose_name": "the left arm raised", "background": "white"}),
    ("pose", "person", {"colour": "blue", "pose_name": "arms out", "background": "yellow"}),
]

# img2img keeps the scene's layout and changes what the prompt changes; inpainting repaints the object's box.
EDIT_SCENES = [
    ("img2img", {"colour": "red", "shape": "circle", "background": "blue"}, "a green circle on a blue background"),
    ("inpaint", {"colour": "white", "shape": "square", "background": "purple"},
     "a yellow triangle on a purple background"),
]
EDIT_STRENGTH = 0.7


def _enlarged(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(pixels).resize((SHOWN_SIZE, SHOWN_SIZE), Image.NEAREST)


def write_examples(folder: Path) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    entries = [{"mode": "text", "prompt": prompt} for prompt in TEXT_PROMPTS]
    for style, trigger in world.STYLES.items():
        entries.append({"mode": "text", "prompt": f"{trigger}, a yellow circle on a blue background",
                        "lora": style, "lora_weight": 1.0})
    for index, (mode, kind, attributes) in enumerate(CONTROL_SCENES):
        scene = world.make_scene(EXAMPLE_SEED + index, kind, **attributes)
        name = f"{mode}_{index}"
        if mode == "pose":  # drawn at full size, the way OpenPose maps are
            control = Image.fromarray(world.draw_pose_map(scene.keypoints, SHOWN_SIZE))
        else:
            control = _enlarged(getattr(scene, mode))
        control.save(folder / f"{name}_map.png")
        _enlarged(scene.image).save(folder / f"{name}_source.png")
        entries.append({"mode": mode, "prompt": scene.caption, "control_map": f"{name}_map.png",
                        "source_image": f"{name}_source.png"})
    for index, (mode, attributes, prompt) in enumerate(EDIT_SCENES, start=len(CONTROL_SCENES)):
        scene = world.make_scene(EXAMPLE_SEED + index, "object", **attributes)
        _enlarged(scene.image).save(folder / f"{mode}_{index}_image.png")
        entry = {"mode": mode, "prompt": prompt, "image": f"{mode}_{index}_image.png", "strength": EDIT_STRENGTH}
        if mode == "inpaint":
            _enlarged(_box_mask(scene.mask)).save(folder / f"{mode}_{index}_mask.png")
            entry.update(mask=f"{mode}_{index}_mask.png", strength=1.0)
        entries.append(entry)
    (folder / "prompts.json").write_text(json.dumps(entries, indent=2) + "\n")
    return entries


def _box_mask(object_mask: np.ndarray) -> np.ndarray:
    """White over the object's bounding box, two pixels wider on each side, black elsewhere."""
    rows, columns = np.nonzero(object_mask)
    box = np.zeros(object_mask.shape, dtype=np.uint8)
    box[max(rows.min() - 2, 0) : rows.max() + 3, max(columns.min() - 2, 0) : columns.max() + 3] = 255
    return box


if __name__ == "__main__":
    write_examples(Path(sys.argv[1] if len(sys.argv) > 1 else "examples/embedded"))
