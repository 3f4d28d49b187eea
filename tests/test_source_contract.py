"""The source contract: a source is one module-level object.

TOY below is registered here and nowhere else, and it runs as a recipe stage beside a built-in
one, through `mix --preset emu` (its Emu weight from the registry), `validate`, `stats`,
`preview` and the trainer's loader. The registry and the `source` enums of schemas/ agree.
"""

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from emu_data import cli
from emu_data.core import options, schema
from emu_data.synthetic import world
from emu_data import sources as registry
from emu_data.core.corpus import Unit
from emu_data.core.options import option, positive_int
from emu_data.core.records import sample, status

TOY_KIND = "toy_pairs"


@dataclass(frozen=True)
class ToyConfig:
    lines_per_unit: int = option(3, parse=positive_int, help="caption lines per unit of work")
    image_size: int = option(32, parse=positive_int, help="side of the drawn image")


@dataclass(frozen=True)
class ToyInputs:
    input: list = option(many=True, required=True, parse=Path, metavar="TXT", help="caption files, one per line")


@dataclass(frozen=True)
class ToyUnit:
    path: str
    first: int
    lines: tuple
    config: ToyConfig


def toy_units(files, config, ray):
    found = []
    for path in files:
        lines = [line.strip() for line in Path(path).read_text().splitlines()]
        step = config.lines_per_unit
        found += [Unit(f"{Path(path).stem}-{i // step:04d}", ToyUnit(str(path), i, tuple(lines[i:i + step]), config))
                  for i in range(0, len(lines), step)]
    return found


def toy_process(unit: ToyUnit, writer) -> None:
    """One [image, caption] pair per non-empty line; an empty line is a status row."""
    for number, text in enumerate(unit.lines, unit.first):
        key = f"{TOY_KIND}:{Path(unit.path).stem}-{number}"
        if not text:
            writer.add_status(status(key, TOY_KIND, "invalid_record", input=f"{unit.path}:{number}",
                                     error="empty line"))
            continue
        scene = world.random_scene(random.Random(key))
        image = world.encode(world.render(scene, unit.config.image_size, unit.config.image_size))
        writer.add_sample(sample(key, TOY_KIND, [image, text], meta={"line": number}))
        writer.add_status(status(key, TOY_KIND, "ok", input=f"{unit.path}:{number}", samples=1))


TOY = registry.register(registry.Source(
    name="toy", kinds=(registry.Kind(TOY_KIND, emu_weight=64, colour="#0b7285", pair_rank=9),),
    help="caption lines -> [image, caption] pairs (a test's source)",
    config=ToyConfig, inputs=ToyInputs, resolve=lambda given: sorted(Path(p) for p in given.input),
    units=toy_units, process=toy_process, layout=lambda config: {"toy": asdict(config)}))


def test_the_registry_and_the_schemas_name_the_same_built_in_record_sources():
    builtin = [k.name for s in registry.all_sources() if s.name in registry.BUILTIN for k in s.kinds]
    for record in ("interleaved", "status"):
        assert list(schema.record(record).field("source").enum) == builtin
    assert registry.kind_names()[:len(builtin)] == tuple(builtin)   # ids: built-ins first, fixed
    assert registry.kind_id(TOY_KIND) == len(builtin)


def test_a_registered_source_runs_through_a_recipe_mix_validate_stats_preview_and_the_loader(
        tmp_path, tiny_vit, capsys):
    captions = tmp_path / "captions.txt"
    captions.write_text("a red circle\na blue square\n\na green star\na red square\na blue circle\n")
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(f"""
defaults:
  num_cpus: 2
stages:
  toy:
    input: {captions}
  pairs:
    command: sample
    n: 6
    sources: laion
  mix:
    inputs: ["${{toy}}", "${{pairs}}"]
    preset: emu
  features:
    corpus: ${{mix}}
    model: {tiny_vit}
    pretrained: none
    tokens: patch
  check:
    command: validate
    paths: ["${{mix}}", "${{features}}"]
  numbers:
    command: stats
    path: ${{mix}}
    json: true
  look:
    command: preview
    path: ${{mix}}
""")
    out = tmp_path / "run"
    assert cli.main(["run", str(recipe), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"emu-data toy --num-cpus 2 --input {captions}" in printed and "no violations" in printed

    toy = json.loads((out / "toy" / "_manifest.json").read_text())
    assert toy["source_counts"] == {TOY_KIND: 5} and toy["status_counts"] == {"ok": 5, "invalid_record": 1}
    mixed = json.loads((out / "mix" / "_manifest.json").read_text())
    assert mixed["source_counts"].get(TOY_KIND, 0) > 0    # weight 64 from the registry, not 0
    assert f'"{TOY_KIND}"' in printed                     # stats --json by source
    assert "#0b7285" in (out / "look.html").read_text()   # preview's badge colour

    from emu_data.model import data
    from emu_data.model.config import DataConfig

    config = DataConfig(seq_len=96, batch_size=2, holdout=0.2, workers=0)
    assert config.weights[TOY_KIND] == 64.0
    index, _ = data.build_index(out / "mix", out / "features", config)
    assert registry.kind_id(TOY_KIND) in set(index.source.tolist())
    chosen, _ = data.mixture(index, config.weights)
    assert registry.kind_id(TOY_KIND) in chosen


def test_a_source_command_takes_its_options_from_its_config_fields(capsys):
    with pytest.raises(SystemExit):
        cli.main(["toy", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "--lines-per-unit LINES_PER_UNIT caption lines per unit of work (default 3)" in shown
    assert "--out OUT" in shown and "--ray-address" in shown and "--retry-failed" not in shown   # nothing retryable
    spec = options.find((options.Params("config", ToyConfig),), "image_size")
    assert spec.flag == "--image-size" and spec.default == 32
