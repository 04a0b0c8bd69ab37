"""Drawing of synthetic pedestrians, cameras and detection error with numpy (no data, no GPU).

A pedestrian (``Look``) is a vertical stack of parts, top to bottom, in fractions of its height:
    head 0.00-0.14 (hair, face), upper body 0.14-0.51, lower body 0.51-0.88, shoes 0.88-0.96,
plus an optional bag. Upper and lower body have the same height and width on purpose: swapping
their (colour, texture) keeps the person's colour histogram and mean colour but changes the
vertical order, which is the case a global (pooled) feature cannot separate and the vertical
convolution of the paper can (see ``synthetic.py`` for how such pairs are built).

Views change the silhouette: ``front`` (face visible, backpack straps only), ``back`` (hair over the
head, backpack covering the upper back, handbag on the other side) and ``side`` (narrower body,
backpack sticking out behind, handbag hidden). A camera adds a background with clutter, a colour
cast, a brightness shift, blur and noise. Detection error scales the person and shifts it inside the
box, so parts move up and down between images of one identity: the misalignment that SC-STN is meant
to undo. ``detection_error_box(E)`` says how much: a level E scales the person by a factor drawn from
[1 - E, 1 + E] and shifts it by up to 0.4 E of the box height vertically and 0.48 E of the box width
horizontally (uniform draws). E = 0 is a perfect detector (person centred, fixed scale); the default
E = 0.25 gives a scale of 0.75-1.25 and shifts of up to 10 % of the height and 12 % of the width.
Above E ~ 0.11 the largest, most shifted people no longer fit the box and lose their head or
feet, as with real detections that are too tight.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageFilter

# Well separated, saturated and neutral colours (RGB) for clothes.
PALETTE = np.array(
    [
        (200, 30, 30),
        (30, 150, 40),
        (30, 60, 200),
        (230, 200, 30),
        (240, 240, 240),
        (25, 25, 25),
        (130, 130, 130),
        (230, 120, 20),
        (140, 40, 160),
        (30, 190, 200),
        (120, 70, 30),
        (240, 140, 180),
        (20, 40, 90),
        (150, 190, 60),
    ],
    dtype=np.float32,
)
SKIN = np.array([(240, 200, 170), (200, 150, 110), (150, 100, 70), (90, 60, 40)], dtype=np.float32)
HAIR = np.array([(20, 15, 10), (90, 60, 30), (200, 170, 90), (140, 140, 140)], dtype=np.float32)
TEXTURES = ("plain", "hstripes", "vstripes", "checks", "dots")
VIEWS = ("front", "back", "side")
BAGS = (None, "backpack", "handbag")

# Vertical extent of each part as a fraction of the person's height.
HEAD, UPPER, LOWER, SHOES = (0.00, 0.14), (0.14, 0.51), (0.51, 0.88), (0.88, 0.96)
BODY_WIDTH = 0.34  # torso / legs width as a fraction of the person's height (front view)

# Detection error (see the module docstring): the default level and the largest one accepted (at 0.5
# the person is drawn at half to one and a half times its normal size and moved by up to a fifth of
# the box, beyond which most images would no longer show a whole person).
DEFAULT_DETECTION_ERROR = 0.25
MAX_DETECTION_ERROR = 0.5
# Largest shift per unit of detection error: (fraction of the box height, fraction of its width).
SHIFT_PER_LEVEL = (0.4, 0.48)


def detection_error_box(level: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """``(scale_range, shift)`` for ``render`` at detection error ``level`` in [0, MAX_DETECTION_ERROR]."""
    level = float(level)
    if not 0.0 <= level <= MAX_DETECTION_ERROR:
        raise ValueError(f"detection_error must be in [0, {MAX_DETECTION_ERROR}], got {level:g}")
    # Multiplying by 0.25 (a power of two) is exact, so the default level reproduces the former
    # constants (0.75, 1.25), (0.10, 0.12) bit for bit and the default set keeps its bytes.
    return (1.0 - level, 1.0 + level), (SHIFT_PER_LEVEL[0] * level, SHIFT_PER_LEVEL[1] * level)


@dataclass(frozen=True)
class Garment:
    colour: int  # index into PALETTE
    second: int  # second colour of the texture (unused for "plain")
    texture: str


@dataclass(frozen=True)
class Look:
    """Everything that identifies a synthetic person (shared by all its images)."""

    upper: Garment
    lower: Garment
    shoes: int  # PALETTE index
    skin: int  # SKIN index
    hair: int  # HAIR index
    bag: str | None  # None, "backpack" or "handbag"
    bag_colour: int  # PALETTE index
    width_scale: float

    def swapped(self) -> Look:
        """The same clothes in the other vertical order (upper <-> lower)."""
        return replace(self, upper=self.lower, lower=self.upper)


def random_look(rng: np.random.Generator) -> Look:
    def garment() -> Garment:
        colour, second = rng.choice(len(PALETTE), size=2, replace=False)
        return Garment(int(colour), int(second), str(rng.choice(TEXTURES)))

    upper = garment()
    lower = garment()
    while lower.colour == upper.colour:  # a swap must change something visible
        lower = garment()
    return Look(
        upper,
        lower,
        int(rng.integers(len(PALETTE))),
        int(rng.integers(len(SKIN))),
        int(rng.integers(len(HAIR))),
        BAGS[int(rng.integers(len(BAGS)))],
        int(rng.integers(len(PALETTE))),
        float(rng.uniform(0.9, 1.1)),
    )


def _texture(garment: Garment, shape: tuple[int, int], period: float, phase: tuple[int, int]) -> np.ndarray:
    """An (h, w, 3) patch of ``garment`` with its pattern; ``period`` in pixels follows the person's scale."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    yy, xx = yy + phase[0], xx + phase[1]
    p = max(period, 2.0)
    if garment.texture == "hstripes":
        mask = (yy // (p / 2)) % 2 == 0
    elif garment.texture == "vstripes":
        mask = (xx // (p / 2)) % 2 == 0
    elif garment.texture == "checks":
        mask = ((yy // (p / 2)) + (xx // (p / 2))) % 2 == 0
    elif garment.texture == "dots":
        mask = ((yy % p) < p / 3) & ((xx % p) < p / 3)
        mask = ~mask  # mostly main colour with small dots of the second one
    else:
        mask = np.ones((h, w), dtype=bool)
    return np.where(mask[..., None], PALETTE[garment.colour], PALETTE[garment.second])


class Canvas:
    """An (H, W, 3) float image plus a person-to-pixel mapping (top, left, person height)."""

    def __init__(self, image: np.ndarray, top: float, centre_x: float, person_h: float):
        self.image = image
        self.top, self.cx, self.ph = top, centre_x, person_h

    def rect(self, y0: float, y1: float, x0: float, x1: float):
        """Pixel box of a rectangle given in person units (y from the top of the head, x from the centre)."""
        H, W = self.image.shape[:2]
        r0, r1 = int(round(self.top + y0 * self.ph)), int(round(self.top + y1 * self.ph))
        c0, c1 = int(round(self.cx + x0 * self.ph)), int(round(self.cx + x1 * self.ph))
        return (max(r0, 0), min(r1, H), max(c0, 0), min(c1, W)), (r0, c0)

    def fill(self, y0, y1, x0, x1, colour=None, garment: Garment | None = None):
        (r0, r1, c0, c1), origin = self.rect(y0, y1, x0, x1)
        if r1 <= r0 or c1 <= c0:
            return  # entirely outside the box (detection error can push parts out)
        if garment is None:
            self.image[r0:r1, c0:c1] = colour
        else:
            phase = (r0 - origin[0], c0 - origin[1])
            self.image[r0:r1, c0:c1] = _texture(garment, (r1 - r0, c1 - c0), 0.07 * self.ph, phase)


def draw_person(canvas: Canvas, look: Look, view: str, mirror: bool) -> None:
    side = view == "side"
    half = BODY_WIDTH * look.width_scale * (0.7 if side else 1.0) / 2
    s = -1.0 if mirror else 1.0  # which side bags hang on
    # Body: upper and lower of identical size (see the module docstring).
    canvas.fill(*UPPER, -half, half, garment=look.upper)
    canvas.fill(*LOWER, -half, half, garment=look.lower)
    gap = 0.02  # two shoes with background between them
    canvas.fill(SHOES[0], SHOES[1], -half, -gap / 2, colour=PALETTE[look.shoes])
    canvas.fill(SHOES[0], SHOES[1], gap / 2, half, colour=PALETTE[look.shoes])
    # Head: hair on top (the whole head seen from the back), face below.
    head_half = 0.08
    if view == "back":
        canvas.fill(*HEAD, -head_half, head_half, colour=HAIR[look.hair])
    else:
        canvas.fill(HEAD[0], HEAD[0] + 0.045, -head_half, head_half, colour=HAIR[look.hair])
        canvas.fill(HEAD[0] + 0.045, HEAD[1], -head_half * (0.8 if side else 1.0), head_half, colour=SKIN[look.skin])
    bag = PALETTE[look.bag_colour]
    if look.bag == "backpack":
        if view == "back":
            canvas.fill(0.17, 0.42, -half * 0.75, half * 0.75, colour=bag)
        elif view == "side":
            lo, hi = (half, half + 0.09) if s > 0 else (-half - 0.09, -half)  # sticks out behind
            canvas.fill(0.17, 0.42, lo, hi, colour=bag)
        else:  # front: only the straps
            for x in (-half * 0.6, half * 0.6):
                canvas.fill(UPPER[0], 0.36, x - 0.015, x + 0.015, colour=bag)
    elif look.bag == "handbag" and view != "side":
        x = s * half * (1 if view == "front" else -1)
        lo, hi = (x, x + 0.09) if x > 0 else (x - 0.09, x)
        canvas.fill(0.44, 0.60, lo, hi, colour=bag)


@dataclass(frozen=True)
class Camera:
    gain: tuple[float, float, float]  # colour cast
    brightness: float  # additive, in 0..255 units
    blur: float  # Gaussian blur radius in pixels
    noise: float  # Gaussian noise std
    background: tuple[tuple[float, float, float], tuple[float, float, float]]  # top / bottom colours
    clutter: int  # number of clutter rectangles


def random_camera(rng: np.random.Generator) -> Camera:
    top = rng.uniform(60, 200, size=3)
    bottom = np.clip(top + rng.uniform(-60, 60, size=3), 0, 255)
    return Camera(
        tuple(rng.uniform(0.8, 1.2, size=3).round(3)),
        float(rng.uniform(-25, 25)),
        float(rng.uniform(0.0, 1.2)),
        float(rng.uniform(2, 6)),
        (tuple(top.round(1)), tuple(bottom.round(1))),
        int(rng.integers(2, 8)),
    )


def background(rng: np.random.Generator, camera: Camera, height: int, width: int) -> np.ndarray:
    """Camera's vertical gradient plus random muted rectangles (other objects, partial people)."""
    t = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    img = (1 - t) * np.asarray(camera.background[0], np.float32) + t * np.asarray(camera.background[1], np.float32)
    img = np.broadcast_to(img, (height, width, 3)).copy()
    for _ in range(int(rng.integers(0, camera.clutter + 1))):
        h, w = int(rng.integers(4, height // 2)), int(rng.integers(3, width // 2))
        y, x = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
        img[y : y + h, x : x + w] = 0.5 * img[y : y + h, x : x + w] + 0.5 * rng.uniform(40, 220, size=3)
    return img


def render(
    rng: np.random.Generator,
    look: Look | None,
    camera: Camera,
    height: int = 128,
    width: int = 64,
    view: str | None = None,
    scale_range=(0.75, 1.25),
    shift=(0.10, 0.12),
    clean: bool = False,
) -> np.ndarray:
    """One (height, width, 3) uint8 image of ``look`` (None: background only) seen by ``camera``.

    ``shift`` is the largest displacement (fraction of height, of width) of the person inside the box.
    ``clean=True`` skips background clutter, camera effects and noise (used by tests and figures).
    """
    img = background(rng, camera, height, width) if not clean else np.full((height, width, 3), 127.0, np.float32)
    view = view or VIEWS[int(rng.choice(3, p=[0.4, 0.4, 0.2]))]
    mirror = bool(rng.integers(2))
    scale = float(rng.uniform(*scale_range))
    person_h = 0.85 * height * scale
    top = (height - 0.96 * person_h) / 2 + rng.uniform(-shift[0], shift[0]) * height
    cx = width / 2 + rng.uniform(-shift[1], shift[1]) * width
    if look is not None:
        draw_person(Canvas(img, top, cx, person_h), look, view, mirror)
    if clean:
        return np.clip(img, 0, 255).round().astype(np.uint8)
    img = img * np.asarray(camera.gain, np.float32) + camera.brightness
    out = Image.fromarray(np.clip(img, 0, 255).round().astype(np.uint8))
    if camera.blur > 0.05:
        out = out.filter(ImageFilter.GaussianBlur(camera.blur))
    # Sensor noise with std camera.noise; uniform rather than Gaussian because it is 5x cheaper to draw.
    noise = (rng.random((height, width, 3), dtype=np.float32) - 0.5) * (camera.noise * 12**0.5)
    img = np.asarray(out, np.float32) + noise
    return np.clip(img, 0, 255).round().astype(np.uint8)
