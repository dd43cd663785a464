"""The square crops cut from a (resized) frame: one ``Crop`` type, the named geometries, and the cut itself.

A geometry is a rule for placing crops of side c on an H x W frame (L and S: its long and short side):

- ``'centre'``: one crop at ``((H - c) // 2, (W - c) // 2)``.
- ``'three'``: start, centre and end of the long side, centred on the short side, the end crop at L - c
  (PySlowFast / mmaction2 ``ThreeCrop``).
- ``'five'``: top-left, top-right, centre, bottom-left, bottom-right.
- ``'ten'``: those five, then the same five positions on the frame mirrored left-right. The order of the
  public I3D-R50 10-crop extractor (its ``oversample_data``), not torchvision's TenCrop (TL, TR, BL, BR, C).
- ``'caffe2'`` with a count S: the Caffe2 video-nonlocal-net multi-crop test
  (``caffe2_customized_ops/video/customized_video_io.cc``, ClipTransformFlex):

  * S = 1: the centre crop (ClipTransformFlex with use_center_crop).
  * S = 3: positions p = 0, 1, 2 along the long side at offset ``p * ((L - c) // 2)``, centred on the short
    side. Note the Caffe2 rounding: the third crop sits at 2 * ((L - c) // 2), one pixel short of L - c
    when L - c is odd (455 wide, crop 256: offsets 0, 99, 198).
  * S = 6: positions 0-5, the last three the first three mirrored (Caffe2 TEST_FULLY_CONV_FLIP,
    ``mirror = pos / 3``).
  * other S (not a Caffe2 protocol): S offsets evenly spaced from 0 to L - c, ``i * (L - c) // (S - 1)``.

  Caffe2 picks the axis with ``if (h_off > 0)``, which for its only test setting (crop == short side) is
  the long side; we use the long side in all cases, so a crop smaller than the short side still slides
  along the long side (Caffe2's literal test would slide along the height of a landscape frame). A square
  frame slides along the width, which is Caffe2's branch when h_off == 0.

One convention for mirrored crops, everywhere: a mirrored crop's box is in the coordinates of the frame
mirrored left-right (the frame is mirrored, then the box is cut). So the ten-crop's 'mirrored top-left' is
the original top-right region mirrored, and the Caffe2 6-crop's fourth crop (position 0, mirrored) is the
mirrored frame's right end. Crops are named by their position in the frame they are cut from.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence

# the feature extractors' --crops N: the geometry of N crops; 'caffe2' takes any count
GEOMETRY_OF_COUNT = {1: 'centre', 3: 'three', 5: 'five', 10: 'ten'}
CROP_COUNTS = tuple(GEOMETRY_OF_COUNT)
_FIXED_COUNT = {geometry: count for count, geometry in GEOMETRY_OF_COUNT.items()}
GEOMETRIES = tuple(_FIXED_COUNT) + ('caffe2',)


class Crop(NamedTuple):
    """One crop: rows [top, top + size) and columns [left, left + size) of the frame, or of the frame
    mirrored left-right when ``mirrored`` (the box is then in the mirrored frame's coordinates)."""
    name: str
    top: int
    left: int
    size: int
    mirrored: bool = False

    def describe(self) -> dict:
        return {'name': self.name, 'rows': [self.top, self.top + self.size],
                'cols': [self.left, self.left + self.size],
                'frame': 'mirrored left-right' if self.mirrored else 'original'}


def crop_boxes(height: int, width: int, size: int, geometry: str, count: Optional[int] = None) -> List[Crop]:
    """The crops of a (height, width) frame, in the order they are stored (see the module docstring).

    ``count``: required by 'caffe2' (the S of an SxT test); the other geometries have a fixed count, which
    ``count`` may repeat.
    """
    if geometry not in GEOMETRIES:
        raise ValueError(f'crop geometry must be one of {GEOMETRIES}, got {geometry!r}')
    if geometry == 'caffe2':
        if count is None or count < 1:
            raise ValueError(f'caffe2 crops need a positive count, got {count}')
    elif count not in (None, _FIXED_COUNT[geometry]):
        raise ValueError(f'{geometry!r} is {_FIXED_COUNT[geometry]} crops, not {count}')
    if size > min(height, width):
        raise ValueError(f'a {size}x{size} crop does not fit a {height}x{width} frame')
    dy, dx = height - size, width - size
    five = [Crop('top-left', 0, 0, size), Crop('top-right', 0, dx, size), Crop('centre', dy // 2, dx // 2, size),
            Crop('bottom-left', dy, 0, size), Crop('bottom-right', dy, dx, size)]
    if geometry == 'centre' or (geometry == 'caffe2' and count == 1):
        return [five[2]]
    if geometry == 'five':
        return five
    if geometry == 'ten':
        return five + [Crop(f'mirrored {c.name}', c.top, c.left, size, True) for c in five]
    slack = max(dy, dx)
    if geometry == 'three':
        return _along_long_side(height, width, size, (0, slack // 2, slack))
    if count in (3, 6):
        three = _along_long_side(height, width, size, [p * (slack // 2) for p in range(3)])
        return three if count == 3 else three + [_mirror_region(c, width) for c in three]
    return _along_long_side(height, width, size, [i * slack // (count - 1) for i in range(count)])


def _along_long_side(height: int, width: int, size: int, offsets: Sequence[int]) -> List[Crop]:
    """Crops at ``offsets`` along the long side (the width of a square frame), centred on the short side;
    three are named start, centre, end (left/right or top/bottom), more by their place ('2 of 4')."""
    vertical = height > width
    across = ((width if vertical else height) - size) // 2
    if len(offsets) == 3:
        names = ('top', 'centre', 'bottom') if vertical else ('left', 'centre', 'right')
    else:
        names = tuple(f'{i + 1} of {len(offsets)}' for i in range(len(offsets)))
    return [Crop(name, at, across, size) if vertical else Crop(name, across, at, size)
            for name, at in zip(names, offsets)]


_MIRRORED_NAME = {'left': 'right', 'right': 'left'}


def _mirror_region(crop: Crop, width: int) -> Crop:
    """The same pixels as ``crop`` mirrored left-right (Caffe2 flips the crop it cut): in the mirrored
    frame's coordinates, named by where it lies there (the left end's mirror is the mirrored frame's right)."""
    return Crop(f'mirrored {_MIRRORED_NAME.get(crop.name, crop.name)}', crop.top, width - crop.left - crop.size,
                crop.size, True)


# ------------------------------------------------------------------------------------------------- cut

def mirrored_frames(frames, crops: Sequence[Crop]):
    """``frames`` (..., H, W, C) mirrored left-right, once, when some crop is mirrored; else None.

    Mirroring the frames once and cutting each mirrored crop as a view of them is cheaper than flipping
    every cut crop: fewer pixels than 3 or 5 mirrored crops per frame, and each crop is then copied once.
    """
    return frames.flip(-2) if any(crop.mirrored for crop in crops) else None


def cut(frames, crop: Crop, mirrored=None):
    """The pixels of ``crop`` in channels-last frames (..., H, W, C), as a view (no copy); a mirrored crop
    is cut from ``mirrored``, the same frames mirrored left-right (``mirrored_frames``)."""
    source = mirrored if crop.mirrored else frames
    if source is None:
        raise ValueError(f'crop {crop.name!r} is cut from the mirrored frames, which were not given')
    return source[..., crop.top:crop.top + crop.size, crop.left:crop.left + crop.size, :]
