"""Readers of the paper's public data sets, in the layouts their archives unpack to (``data_scripts/public_data.py``
downloads or unpacks them); labels mapped to train ids with ignore = 255.

==============  ==================================================================================  ========
data set        layout under ``root``                                                               classes
==============  ==================================================================================  ========
ADE20K          ``images/{training,validation}/*.jpg``, ``annotations/{training,validation}/*.png``  150
Cityscapes      ``leftImg8bit/{split}/<city>/*_leftImg8bit.png``, ``gtFine/{split}/<city>/*_gtFine_labelIds.png``  19
COCO-Stuff-164K ``images/{train2017,val2017}/*.jpg``, ``annotations/{train2017,val2017}/*.png``       171
BDD100K         ``images/10k/{train,val}/*.jpg``, ``labels/sem_seg/masks/{train,val}/*.png``          19
==============  ==================================================================================  ========

``root`` defaults to ``$SEGCAL_ADE20K`` / ``$SEGCAL_CITYSCAPES`` / ``$SEGCAL_COCOSTUFF`` / ``$SEGCAL_BDD100K``, else
``<cache_dir>/<key>``. Every reader is a :class:`~segcal_lib.data.folder.FolderDataset` (resize options,
decoded-image cache, data identity) with the data set's split names mapped from ``"train"``/``"val"``
(``"cal"``)/``"test"``.
"""

from __future__ import annotations

import os
from pathlib import Path

from segcal_lib.config import cache_dir
from segcal_lib.data.base import IGNORE_INDEX
from segcal_lib.data.datasets import DATASETS, IMAGE_SUFFIXES
from segcal_lib.data.folder import FolderDataset

__all__ = ["ADE20K", "ADE20K_CLASSES", "BDD100K", "CITYSCAPES_CLASSES", "CITYSCAPES_ID_TO_TRAINID", "COCOSTUFF_CLASSES",
           "COCOStuff", "Cityscapes"]

ADE20K_CLASSES = tuple((
    "wall,building,sky,floor,tree,ceiling,road,bed,windowpane,grass,cabinet,sidewalk,person,earth,door,table,mountain,"
    "plant,curtain,chair,car,water,painting,sofa,shelf,house,sea,mirror,rug,field,armchair,seat,fence,desk,rock,"
    "wardrobe,lamp,bathtub,railing,cushion,base,box,column,signboard,chest of drawers,counter,sand,sink,skyscraper,"
    "fireplace,refrigerator,grandstand,path,stairs,runway,case,pool table,pillow,screen door,stairway,river,bridge,"
    "bookcase,blind,coffee table,toilet,flower,book,hill,bench,countertop,stove,palm,kitchen island,computer,"
    "swivel chair,boat,bar,arcade machine,hovel,bus,towel,light,truck,tower,chandelier,awning,streetlight,booth,"
    "television receiver,airplane,dirt track,apparel,pole,land,bannister,escalator,ottoman,bottle,buffet,poster,stage,"
    "van,ship,fountain,conveyer belt,canopy,washer,plaything,swimming pool,stool,barrel,basket,waterfall,tent,bag,"
    "minibike,cradle,oven,ball,food,step,tank,trade name,microwave,pot,animal,bicycle,lake,dishwasher,screen,blanket,"
    "sculpture,hood,sconce,vase,traffic light,tray,ashcan,fan,pier,crt screen,plate,monitor,bulletin board,shower,"
    "radiator,glass,clock,flag").split(","))

CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                      "bicycle")
#: Cityscapes label ids (``*_gtFine_labelIds.png``) to the 19 train ids; every other id (void, unused) -> 255.
CITYSCAPES_ID_TO_TRAINID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                            26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}

_COCO_THINGS = (
    "person,bicycle,car,motorcycle,airplane,bus,train,truck,boat,traffic light,fire hydrant,-,stop sign,parking meter,"
    "bench,bird,cat,dog,horse,sheep,cow,elephant,bear,zebra,giraffe,-,backpack,umbrella,-,-,handbag,tie,suitcase,"
    "frisbee,skis,snowboard,sports ball,kite,baseball bat,baseball glove,skateboard,surfboard,tennis racket,bottle,-,"
    "wine glass,cup,fork,knife,spoon,bowl,banana,apple,sandwich,orange,broccoli,carrot,hot dog,pizza,donut,cake,chair,"
    "couch,potted plant,bed,-,dining table,-,-,toilet,-,tv,laptop,mouse,remote,keyboard,cell phone,microwave,oven,"
    "toaster,sink,refrigerator,-,book,clock,vase,scissors,teddy bear,hair drier,toothbrush,-").split(",")
_COCO_STUFF = (
    "banner,blanket,branch,bridge,building-other,bush,cabinet,cage,cardboard,carpet,ceiling-other,ceiling-tile,cloth,"
    "clothes,clouds,counter,cupboard,curtain,desk-stuff,dirt,door-stuff,fence,floor-marble,floor-other,floor-stone,"
    "floor-tile,floor-wood,flower,fog,food-other,fruit,furniture-other,grass,gravel,ground-other,hill,house,leaves,"
    "light,mat,metal,mirror-stuff,moss,mountain,mud,napkin,net,paper,pavement,pillow,plant-other,plastic,platform,"
    "playingfield,railing,railroad,river,road,rock,roof,rug,salad,sand,sea,shelf,sky-other,skyscraper,snow,"
    "solid-other,stairs,stone,straw,structural-other,table,tent,textile-other,towel,tree,vegetable,wall-brick,"
    "wall-concrete,wall-other,wall-panel,wall-stone,wall-tile,wall-wood,water-other,waterdrops,window-blind,"
    "window-other,wood").split(",")
# stuffthingmaps values 0..181 are COCO ids 1..182; the 11 ids marked "-" are unused, the other 171 are the classes.
_COCO_ALL = _COCO_THINGS + _COCO_STUFF
COCOSTUFF_CLASSES = tuple(n for n in _COCO_ALL if n != "-")
COCOSTUFF_ID_TO_TRAINID = {raw: k for k, raw in enumerate(i for i, n in enumerate(_COCO_ALL) if n != "-")}


class _PublicReader(FolderDataset):
    """Pairs found recursively under an image and a label folder; stems compared after removing suffixes."""

    splits: dict[str, str] = {}
    image_strip = ""
    label_strip = ""
    label_suffix = ".png"
    title = ""
    hint = "Get it with `python data_scripts/public_data.py {key} --dest DIR`."

    def __init__(self, root: str | os.PathLike | None = None, split: str = "val", *, resize=None,
                 n: int | None = None, cache: bool = True):
        split = {"cal": "val"}.get(split, split)
        if split not in self.splits:
            raise ValueError(f"split must be one of {sorted(self.splits)} (or 'cal'), got {split!r}")
        self.root_dir = Path(root if root is not None else self.default_root()).expanduser().resolve()
        img_dir, lbl_dir = self._folders(self.root_dir, self.splits[split])
        super().__init__(None, image_dir=img_dir, label_dir=lbl_dir, classes=self.class_list, resize=resize,
                         class_map=self.id_map, n=n, cache=cache)
        self.split = split

    @classmethod
    def default_root(cls) -> Path:
        """``$SEGCAL_<KEY>`` (e.g. ``SEGCAL_ADE20K``) when set, else ``<cache_dir>/<key>``."""
        env = os.environ.get(f"SEGCAL_{cls.key.upper()}")
        return Path(env).expanduser() if env else cache_dir() / cls.key

    def _folders(self, root: Path, name: str) -> tuple[Path, Path]:
        raise NotImplementedError

    def _list(self, folder: Path, suffixes: tuple[str, ...], what: str) -> dict[str, Path]:
        if not folder.is_dir():
            raise FileNotFoundError(self._missing_message(what, folder))
        strip, ok = (self.image_strip, IMAGE_SUFFIXES) if what == "image_dir" else (self.label_strip,
                                                                                     (self.label_suffix,))
        files = {}
        for p in sorted(folder.rglob("*")):
            if p.is_file() and p.name.lower().endswith(ok) and (not strip or p.stem.endswith(strip)):
                files[p.stem[:len(p.stem) - len(strip)] if strip else p.stem] = p
        if not files:
            raise FileNotFoundError(f"{self.title} {what} {str(folder)!r} holds no matching files. "
                                    f"{self.hint.format(key=self.key)}")
        return files

    def _missing_message(self, what: str, path: Path) -> str:
        return (f"{self.title} folder {str(path)!r} does not exist; expected the layout of "
                f"segcal_lib.data.public under {str(self.root_dir)!r}. {self.hint.format(key=self.key)}")


class ADE20K(_PublicReader):
    """ADE20K (SceneParsing, ``ADEChallengeData2016``): 150 classes; label 0 ("other") -> 255, k -> k - 1.

    ``root`` is the ``ADEChallengeData2016`` folder (or the folder holding it). Splits: train (20 210), val (2 000).
    """

    key, title = "ade20k", "ADE20K"
    splits = {"train": "training", "val": "validation"}
    class_list = ADE20K_CLASSES
    id_map = {0: IGNORE_INDEX, **{k + 1: k for k in range(150)}}

    def _folders(self, root, name):
        if (root / "ADEChallengeData2016").is_dir():
            root = root / "ADEChallengeData2016"
        return root / "images" / name, root / "annotations" / name


class Cityscapes(_PublicReader):
    """Cityscapes fine annotations: label ids mapped to the 19 train ids (:data:`CITYSCAPES_ID_TO_TRAINID`).

    ``root`` holds ``leftImg8bit/`` and ``gtFine/`` (unpacked from the reader's own ``leftImg8bit_trainvaltest.zip``
    and ``gtFine_trainvaltest.zip``). Splits: train (2 975), val (500), test (1 525, labels withheld: all void).
    """

    key, title = "cityscapes", "Cityscapes"
    splits = {"train": "train", "val": "val", "test": "test"}
    image_strip, label_strip = "_leftImg8bit", "_gtFine_labelIds"
    class_list = CITYSCAPES_CLASSES
    id_map = CITYSCAPES_ID_TO_TRAINID
    hint = ("Download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from cityscapes-dataset.com (free "
            "account), then `python data_scripts/public_data.py cityscapes --archive A.zip --archive B.zip "
            "--dest DIR`.")

    def _folders(self, root, name):
        return root / "leftImg8bit" / name, root / "gtFine" / name


class COCOStuff(_PublicReader):
    """COCO-Stuff-164K: 171 classes (80 things, 91 stuff); stuffthingmaps values mapped to 0..170, 255 unlabeled.

    ``root`` holds ``images/{train2017,val2017}`` and ``annotations/{train2017,val2017}``. Splits: train (118 k),
    val (5 000).
    """

    key, title = "cocostuff", "COCO-Stuff-164K"
    splits = {"train": "train2017", "val": "val2017"}
    class_list = COCOSTUFF_CLASSES
    id_map = COCOSTUFF_ID_TO_TRAINID

    def _folders(self, root, name):
        return root / "images" / name, root / "annotations" / name


class BDD100K(_PublicReader):
    """BDD100K semantic segmentation (10k images): masks already hold the 19 Cityscapes train ids, 255 = ignore.

    ``root`` is the ``bdd100k`` folder of the reader's own ``bdd100k_images_10k.zip`` and
    ``bdd100k_sem_seg_labels_trainval.zip``. Splits: train (7 000), val (1 000).
    """

    key, title = "bdd100k", "BDD100K"
    splits = {"train": "train", "val": "val"}
    class_list = CITYSCAPES_CLASSES
    id_map = {k: k for k in range(19)}
    hint = ("Download bdd100k_images_10k.zip and bdd100k_sem_seg_labels_trainval.zip from bdd-data.berkeley.edu "
            "(free account), then `python data_scripts/public_data.py bdd100k --archive A.zip --archive B.zip "
            "--dest DIR`.")

    def _folders(self, root, name):
        if (root / "bdd100k").is_dir():
            root = root / "bdd100k"
        return root / "images" / "10k" / name, root / "labels" / "sem_seg" / "masks" / name


for _cls in (ADE20K, Cityscapes, COCOStuff, BDD100K):
    DATASETS[_cls.key] = (lambda cls: lambda split="val", **kw: cls(split=split, **kw))(_cls)
