"""Convert any supported dataset (both splits) to the `folder` layout:

    OUT/images/<stem>.<ext>   the image: the source file's bytes, or a PNG of the
                              decoded pixels where the source embeds it (labelme)
    OUT/labels/<stem>.png     class ids (palette PNG), as training reads them
    OUT/classes.txt           one class name per line, class 0 first
    OUT/<split>.txt           the stems of data.train_split and data.val_split

An item's stem is its image's (a labelme file's: the JSON file's). Every file is
written atomically and recorded in OUT/.fcn_graph-outputs.json, so that an
interrupted convert resumes: a file recorded and unchanged since is kept when
the source (recorded in OUT/convert.json) is the same, and everything is
written again when it is not. An existing OUT that convert did not create is
refused, and so is any file there that it did not write.
"""

import os

from fcn_graph.core.errors import UserError
from fcn_graph.core.fileio import (
    OUTPUT_RECORD,
    OutputFolder,
    atomic_write,
    json_text,
    read_regular_file,
    write_json_atomic,
)
from fcn_graph.core.progress import Progress
from fcn_graph.data import datasets
from fcn_graph.data.image_files import IMAGE_EXTENSIONS, write_image, write_label_png
from fcn_graph.data.splits import ImageFileError, LabelFileError, dataset_root

SOURCE_RECORD = "convert.json"


def _source(config):
    d = config.data
    return {"kind": d.kind, "root": os.path.abspath(dataset_root(config)),
            "train_split": d.train_split, "val_split": d.val_split,
            "val_fraction": d.val_fraction, "seed": config.train.seed,
            "coco_crowd": d.coco_crowd, "unknown_colour": d.unknown_colour,
            "num_classes": config.model.num_classes}


def _items(files):
    """(stem, image path, label path, image extension) of each item of a split."""
    for image_path, label_path in zip(files.image_paths, files.label_paths):
        if files.kind == "labelme":
            stem = os.path.splitext(os.path.basename(label_path))[0]
        else:
            stem = os.path.splitext(os.path.basename(image_path))[0]
        ext = os.path.splitext(image_path)[1].lower()
        yield stem, image_path, label_path, ext if ext in IMAGE_EXTENSIONS else ".png"


def plan(splits):
    """{stem: (files, image path, label path, image name)} of every item, checked
    for stems the folder layout cannot hold."""
    items = {}
    for files in splits:
        for stem, image_path, label_path, ext in _items(files):
            if not stem or stem != stem.strip() or any(c.isspace() for c in stem) \
                    or stem.startswith("."):
                raise UserError(f"{image_path}: stem {stem!r} cannot be listed in a split "
                                f"file (it has white space or starts with a dot); rename it")
            known = items.get(stem)
            if known is not None and known[1:3] != (image_path, label_path):
                raise UserError(f"{image_path}: stem {stem!r} is also the stem of "
                                f"{known[1]}; the folder layout needs one image per stem")
            items[stem] = (files, image_path, label_path, f"{stem}{ext}")
    return items


def convert(config, out, *, show_progress=True):
    """Write the config's dataset to folder `out`; returns the number of items written."""
    train = datasets.open_config_split(config, config.data.train_split)
    val = datasets.open_config_split(config, config.data.val_split)
    num_classes = datasets.resolve_num_classes(config.model.num_classes, train)
    names = datasets.class_names_for(train, num_classes)
    items = plan([train, val])
    if os.path.isdir(out) and os.listdir(out) and not os.path.lexists(
            os.path.join(out, OUTPUT_RECORD)):
        raise UserError(f"--out {out}: exists and was not created by convert (no "
                        f"{OUTPUT_RECORD}); choose a new folder")
    folder = OutputFolder(out, "--out")
    for sub in ("images", "labels"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    source = json_text(_source(config), indent=2)
    record = os.path.join(out, SOURCE_RECORD)
    same = folder.owns(SOURCE_RECORD) and _text(record) == source + "\n"
    done = {name for name, entry in folder.files.items()
            if same and "pending" not in entry and folder.owns(name)}
    todo = [stem for stem, (_, _, _, image_name) in items.items()
            if not {f"images/{image_name}", f"labels/{stem}.png"} <= done]
    lists = [f"{files.split}.txt" for files in (train, val)]
    outputs = [SOURCE_RECORD, "classes.txt", *lists]
    for stem in todo:
        outputs += [f"images/{items[stem][3]}", f"labels/{stem}.png"]
    inputs = [p for files in (train, val) for p in files.image_paths + files.label_paths]
    folder.claim(outputs, inputs=inputs)
    folder.flush()
    write_json_atomic(record, _source(config))
    folder.wrote(SOURCE_RECORD)
    progress = Progress(len(todo), label="convert", unit="images") if show_progress else None
    try:
        for count, stem in enumerate(todo, 1):
            files, image_path, label_path, image_name = items[stem]
            _write_item(out, folder, files, image_path, label_path, image_name, stem,
                        num_classes)
            if progress:
                progress.update(count)
        _write_text(out, folder, "classes.txt", names)
        for files, name in zip((train, val), lists):
            _write_text(out, folder, name, [s for s, *_ in _items(files)])
    finally:
        folder.flush()
        if progress:
            progress.close()
    return len(todo)


def _write_item(out, folder, files, image_path, label_path, image_name, stem, num_classes):
    try:
        image, label = datasets.read_pair(image_path, label_path, num_classes,
                                          files.label_offset, files.reader)
    except (ImageFileError, LabelFileError) as err:
        raise UserError(str(err)) from None
    target = os.path.join(out, "images", image_name)
    if image_path.lower().endswith(IMAGE_EXTENSIONS):
        data = read_regular_file(image_path)
        with atomic_write(target) as tmp:
            with open(tmp, "wb") as handle:
                handle.write(data)
    else:
        write_image(target, image)
    folder.wrote(f"images/{image_name}")
    write_label_png(os.path.join(out, "labels", f"{stem}.png"), label)
    folder.wrote(f"labels/{stem}.png")


def _write_text(out, folder, name, lines):
    with atomic_write(os.path.join(out, name)) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write("".join(f"{line}\n" for line in lines))
    folder.wrote(name)


def _text(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError):
        return None
