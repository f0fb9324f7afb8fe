"""Writes a label-complete copy of CASME II, SAMM and SMIC-HS in their official layouts whose clips are those of
the MEGC 2019 composite list (plus the clips a real copy has that the list leaves out), with tiny frames.

Independent of SynthME and of mer_jax's own tables: the sheets are written here from the datasets' documented
layouts, the raw emotion labels from the datasets' own vocabularies, so reading the copy back with
``protocol=megc2019`` checks the readers, the label mapping and the list selection together.

Real-copy facts it reproduces (see mer_jax/data/official/README.md):
* CASME II negative clips are disgust or repression; the copy also has two disgust clips the list leaves out:
  sub04/EP12_01f (ApexFrame '/') and sub05/EP09_05f (OnsetFrame = ApexFrame), and clips labelled
  others / fear / sadness, which no 3-class mapping keeps.
* SAMM negative clips are anger, contempt, disgust, fear or sadness (6 sadness clips: kept by MEGC 2019, left out
  by the paper's Table 2); the copy also has 'Other' clips. Subject cells are numbers (6 -> folder 006).
* SMIC-HS folders use the release's unpadded names (s1, s1_ne_01) where the list writes s01, s01_ne_01.
"""

import collections
import csv
import os

import cv2
import numpy as np
import openpyxl

GT = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  "mer_jax",
  "data",
  "official",
  "megc2019_composite_3class.csv",
)
FRAMES = 3
CASME2_NEGATIVE = ("disgust", "repression")
SAMM_NEGATIVE = ("anger", "contempt", "disgust", "fear") * 21 + ("sadness",) * 6 + ("anger", "contempt")  # 92
POSITIVE = {"casme2": "happiness", "samm": "happiness", "smic": "positive"}
SURPRISE = {"casme2": "surprise", "samm": "surprise", "smic": "surprise"}
CASME2_LEFT_OUT = (("sub04", "EP12_01f", "disgust", "apex_slash"), ("sub05", "EP09_05f", "disgust", "apex_onset"))
CASME2_UNMAPPED = (("sub01", "EP99_01", "others"), ("sub02", "EP99_02", "fear"), ("sub03", "EP99_03", "sadness"))
SAMM_UNMAPPED = (("6", "006_9_9", "other"),)


def official_rows():
  """[(dataset, subject, clip, label)] of the shipped list, read with the csv module."""
  with open(GT, newline="") as fh:
    return [(d, s, c, int(lab)) for d, s, c, lab in csv.reader(fh)]


def raw_labels():
  """{(dataset, subject, clip): raw emotion label} for the listed clips (negative labels cycled)."""
  out, count = {}, collections.Counter()
  for d, s, c, lab in official_rows():
    if lab == 0:
      pool = {"casme2": CASME2_NEGATIVE, "samm": SAMM_NEGATIVE, "smic": ("negative",)}[d]
      out[(d, s, c)] = pool[count[d] % len(pool)]
      count[d] += 1
    else:
      out[(d, s, c)] = (POSITIVE if lab == 1 else SURPRISE)[d]
  return out


def _frames(folder, first, names):
  os.makedirs(folder, exist_ok=True)
  img = np.full((8, 8), 128, np.uint8)
  for k in range(FRAMES):
    cv2.imwrite(os.path.join(folder, names(first + k)), img)


def write(root, relabel=None, drop=()):
  """Writes <root>/casme2, <root>/samm, <root>/smic; returns {dataset: folder}.

  relabel: {(dataset, subject, clip) in the list's spelling: raw label} overrides; drop: keys left out.
  """
  raw = raw_labels()
  raw.update(relabel or {})
  rows = collections.defaultdict(list)
  for d, s, c, _ in official_rows():
    if (d, s, c) not in drop:
      rows[d].append((s, c, raw[(d, s, c)], ""))
  rows["casme2"] += [(s, c, lab, quirk) for s, c, lab, quirk in CASME2_LEFT_OUT]
  rows["casme2"] += [(s, c, lab, "") for s, c, lab in CASME2_UNMAPPED]
  rows["samm"] += [(s, c, lab, "") for s, c, lab in SAMM_UNMAPPED]
  out = {d: os.path.join(root, d) for d in ("casme2", "samm", "smic")}

  wb = openpyxl.Workbook()
  ws = wb.active
  ws.append(
    ["Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None, "Action Units", "Estimated Emotion"]
  )
  for s, c, lab, quirk in rows["casme2"]:
    apex = {"apex_slash": "/", "apex_onset": 10}.get(quirk, 11)
    ws.append([int(s[3:]), c, None, 10, apex, 10 + FRAMES - 1, None, "4", lab])
    _frames(os.path.join(out["casme2"], "CASME2_RAW_selected", s, c), 10, lambda n: f"img{n}.jpg")
  wb.save(os.path.join(out["casme2"], "CASME2-coding-20140508.xlsx"))

  wb = openpyxl.Workbook()
  ws = wb.active
  ws.title = "FACS_Movement_Only"
  for _ in range(13):
    ws.append(["description"])
  ws.append(
    [
      "Subject",
      "Filename",
      "Inducement Code",
      "Onset Frame",
      "Apex Frame",
      "Offset Frame",
      "Duration",
      "Type",
      "Action Units",
      "Notes",
      "Estimated Emotion",
      "Objective Classes",
    ]
  )
  for s, c, lab, _ in rows["samm"]:
    folder = f"{int(s):03d}"
    ws.append([int(s), c, 1, 100, 101, 100 + FRAMES - 1, FRAMES, "Micro - 1/2", "4", "", lab.capitalize(), 1])
    _frames(os.path.join(out["samm"], "SAMM", folder, c), 100, lambda n, f=folder: f"{f}_{n:05d}.jpg")
  wb.save(os.path.join(out["samm"], "SAMM_Micro_FACS_Codes_v2.xlsx"))

  for s, c, lab, _ in rows["smic"]:
    subj = f"s{int(s[1:])}"
    clip = f"s{int(c.split('_')[0][1:])}_" + c.split("_", 1)[1]
    _frames(os.path.join(out["smic"], "HS", subj, "micro", lab, clip), 1000, lambda n: f"image{n:06d}.bmp")
  return out
