"""Events for a differential run of many Sigma rules (e.g. SigmaHQ's Linux rules): for each rule,
events built from the values of its own detection items, so that the rules are exercised where
they match and where they nearly match. Both bannin and pySigma then judge every event against
every rule; the generator only has to make interesting events, not correct verdicts.

Usage: python3 pysigma_generate.py RULES_DIR > events.json
Prints a JSON list of {"category": ..., "fields": {SigmaName: value}}.
"""

import json
import pathlib
import sys

from sigma.conditions import ConditionAND, ConditionOR
from sigma.rule import SigmaDetection, SigmaDetectionItem, SigmaRule
from sigma.types import (
    SigmaBool,
    SigmaCIDRExpression,
    SigmaCompareExpression,
    SigmaExists,
    SigmaExpansion,
    SigmaNull,
    SigmaNumber,
    SigmaRegularExpression,
    SigmaString,
    SpecialChars,
)

PER_RULE = 40


def text(value):
    """A string a Sigma value matches (wildcards filled in), or None when none is made up."""
    if isinstance(value, SigmaExpansion):
        return text(value.values[0])
    if isinstance(value, SigmaString):
        out = []
        for part in value.s:
            if part == SpecialChars.WILDCARD_MULTI:
                out.append("zz")
            elif part == SpecialChars.WILDCARD_SINGLE:
                out.append("q")
            elif isinstance(part, str):
                out.append(part)
        return "".join(out)
    if isinstance(value, SigmaNumber):
        return value.number
    if isinstance(value, SigmaBool):
        return "true" if value.boolean else "false"
    if isinstance(value, SigmaCIDRExpression):
        return str(next(iter(value.network.hosts()), value.network.network_address))
    if isinstance(value, SigmaCompareExpression):
        n = value.number.number
        op = value.op
        return n + 1 if op in (op.GT, op.GTE) else n - 1
    if isinstance(value, SigmaExists):
        return "present" if value.exists else None
    if isinstance(value, (SigmaNull, SigmaRegularExpression)):
        return None
    return None


def item_value(item, index):
    values = [text(v) for v in item.value]
    values = [v for v in values if v is not None]
    if not values:
        return None
    if item.value_linking is ConditionAND and len(values) > 1:
        return " ".join(str(v) for v in values)
    return values[index % len(values)]


def example(detection, choice, pick):
    """Field values that satisfy one alternative of a detection (choice picks among ORs)."""
    fields = {}
    items = detection.detection_items
    if detection.item_linking is ConditionOR and all(
        isinstance(i, SigmaDetection) for i in items
    ):
        return example(items[choice % len(items)], choice, pick)
    for item in items:
        if isinstance(item, SigmaDetection):
            fields.update(example(item, choice, pick))
        elif isinstance(item, SigmaDetectionItem) and item.field:
            value = item_value(item, pick.get(id(item), choice))
            if value is not None:
                fields[item.field] = value
    return fields


def items_of(detection):
    for item in detection.detection_items:
        if isinstance(item, SigmaDetection):
            yield from items_of(item)
        else:
            yield item


def main():
    events = []
    for path in sorted(pathlib.Path(sys.argv[1]).rglob("*.yml")):
        rule = SigmaRule.from_yaml(path.read_text(encoding="utf-8"))
        category = rule.logsource.category
        detections = list(rule.detection.detections.values())
        made = []
        for choice in range(4):
            union = {}
            for detection in detections:
                union.update(example(detection, choice, {}))
            made.append(union)
            selections = {}
            for detection, name in zip(detections, rule.detection.detections):
                if not name.startswith("filter"):
                    selections.update(example(detection, choice, {}))
            made.append(selections)
            for detection in detections:
                made.append(example(detection, choice, {}))
        for detection in detections:
            for item in items_of(detection):
                for index in range(1, min(len(item.value), 6)):
                    union = {}
                    for d in detections:
                        union.update(example(d, 0, {id(item): index}))
                    made.append(union)
        seen = set()
        for fields in made:
            key = json.dumps(fields, sort_keys=True)
            if fields and key not in seen and len(seen) < PER_RULE:
                seen.add(key)
                events.append({"category": category, "fields": fields})
    json.dump(events, sys.stdout)


if __name__ == "__main__":
    main()
