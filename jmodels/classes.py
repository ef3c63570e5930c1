"""The contest's 29 semantic classes, in label-id order: the one definition every module reads.

Ids 0..28 as the label PNGs store them (CONTEST.md); colours for showing label maps are in
`jmodels.imageio.palette`.
"""
CLASS_NAMES = (
    "mountain", "sky", "water", "sea", "rock", "tree", "earth", "hill", "river", "sand",
    "land", "building", "grass", "plant", "person", "boat", "waterfall", "wall", "pier", "path",
    "lake", "bridge", "field", "road", "railing", "fence", "ship", "house", "other",
)
NUM_CLASSES = len(CLASS_NAMES)  # 29
