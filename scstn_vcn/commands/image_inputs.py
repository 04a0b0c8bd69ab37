"""The image paths a command is given: a folder, a glob pattern, a .txt list, or one image file."""

import glob
import os

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _is_image_name(path):
    return path.lower().endswith(IMAGE_EXTENSIONS)


def _from_folder(folder):
    paths = []
    for current, subfolders, files in os.walk(folder):
        subfolders.sort()  # os.walk visits subfolders in this list's order: sorted, so runs agree
        paths += [os.path.join(current, name) for name in sorted(files) if _is_image_name(name)]
    return paths


def _from_list(list_file, argument):
    """One path a line; blank lines and lines starting with # are skipped. A relative path is taken
    relative to the list file's folder (so a list travels with its images)."""
    try:
        with open(list_file, encoding="utf-8") as handle:
            lines = [line.strip() for line in handle]
    except (UnicodeDecodeError, OSError) as error:
        raise ValueError(f"{argument} {list_file}: cannot be read as a text list of image paths ({error})") from None
    base = os.path.dirname(list_file)
    paths = []
    for number, line in enumerate(lines, start=1):
        if not line or line.startswith("#"):
            continue
        path = line if os.path.isabs(line) else os.path.join(base, line)
        if not os.path.isfile(path):  # before any work is done, and with the line that names it
            raise FileNotFoundError(f"{argument} {list_file}, line {number}: no such image file {path}")
        paths.append(path)
    return paths


def list_images(spec, argument="--images"):
    """The image paths `spec` stands for, in a fixed order: the image files under a folder (recursively,
    sorted), the files a glob pattern matches (sorted; ** recurses), the lines of a .txt list (in its
    order), or the one image file given. Errors name `argument` and what was expected."""
    spec = os.fspath(spec)
    if os.path.isdir(spec):
        paths = _from_folder(spec)
        what = "image files (" + ", ".join(IMAGE_EXTENSIONS) + ") under the folder"
    elif os.path.isfile(spec) and spec.lower().endswith(".txt"):
        paths = _from_list(spec, argument)
        what = "paths listed in the file"
    elif os.path.isfile(spec):
        if not _is_image_name(spec):
            raise ValueError(
                f"{argument} {spec}: expected a folder, a glob pattern, a .txt list or an image file "
                f"({', '.join(IMAGE_EXTENSIONS)})"
            )
        paths = [spec]
        what = "image"
    elif glob.has_magic(spec):
        paths = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p) and _is_image_name(p))
        what = "image files matching the pattern"
    else:
        raise FileNotFoundError(f"{argument} {spec}: no such folder, list or image file (nor a glob pattern)")
    if not paths:
        raise ValueError(f"{argument} {spec}: no {what}")
    return paths
