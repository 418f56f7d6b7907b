"""set_config.py RUN_CONFIG [--drop SECTION]... KEY=VALUE...: make a copied run folder's saved config.yaml say what
the command that resumes it sets (`spi run` refuses a folder whose saved config differs from the command's).

Used by the result commands that start from another run's folder (a copy of its round 0 and evaluations): each
KEY=VALUE is the same dotted setting the command passes to `spi run`; --drop removes a section the copy must not
carry (e.g. the frontier, where the new run evaluates none)."""

from __future__ import annotations

import argparse

import yaml

from spi_align.config import set_dotted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="the copied run folder's config.yaml, rewritten in place")
    parser.add_argument("--drop", action="append", default=[], help="a top-level section to remove")
    parser.add_argument("settings", nargs="*", help="dotted KEY=VALUE settings, as spi run takes them")
    args = parser.parse_intermixed_args()
    with open(args.config) as f:
        cfg = yaml.safe_load(f)
    for section in args.drop:
        cfg.pop(section, None)
    for item in args.settings:
        key, value = item.split("=", 1)
        set_dotted(cfg, key, yaml.safe_load(value))
    with open(args.config, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)


if __name__ == "__main__":
    main()
