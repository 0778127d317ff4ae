"""Markup conversion: rename, merge, drop and keep-only classes, then contiguous training labels.

Original category ids are kept (results must carry them: a wrong id map is the classic cause of mAP 0);
`label` is the training index 0..K-1 in category-id order. A merged class keeps the id of the category
already named like the target, else the smallest id among the merged ones.
"""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from cvpipe.data.schema import DetectionDataset


class ClassMapping(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rename: dict[str, str] = Field(default_factory=dict, description="old name -> new name")
    merge: dict[str, list[str]] = Field(default_factory=dict, description="target name -> names merged into it")
    drop: list[str] = Field(default_factory=list, description="classes whose boxes are removed")
    keep_only: Optional[list[str]] = Field(None, description="keep just these classes (after rename/merge)")


def convert_classes(ds: DetectionDataset, mapping: ClassMapping) -> tuple[DetectionDataset, list[dict]]:
    cats = ds.categories.copy()
    anns = ds.annotations  # copied before the first change (none without a merge): build copies it anyway
    findings: list[dict] = []
    names = set(cats["name"])
    asked = set(mapping.rename) | {n for srcs in mapping.merge.values() for n in srcs} | set(mapping.drop) | set(
        mapping.keep_only or [])
    unknown = sorted(asked - names - set(mapping.rename.values()) - set(mapping.merge))
    if unknown:
        raise ValueError(f"class mapping names classes the data does not have: {unknown}; "
                         f"known: {sorted(names)[:20]}{'...' if len(names) > 20 else ''}")
    cats["name"] = cats["name"].map(lambda n: mapping.rename.get(n, n))
    for target, sources in mapping.merge.items():
        members = cats[cats["name"].isin([target, *sources])]
        if members.empty:
            continue
        named = members[members["name"] == target]
        keep_id = int(named["category_id"].iloc[0] if len(named) else members["category_id"].min())
        moved = members["category_id"][members["category_id"] != keep_id]
        hit = anns["category_id"].isin(moved)
        findings.append({"rule": "merge_class", "action": "fixed", "image_id": None, "ann_id": None,
                         "detail": f"{sorted(sources)} -> {target} (id {keep_id}): {int(hit.sum())} boxes relabelled"})
        if anns is ds.annotations:
            anns = anns.copy()
        anns.loc[hit, "category_id"] = keep_id
        cats = cats[~cats["category_id"].isin(moved)]
        cats.loc[cats["category_id"] == keep_id, "name"] = target
    removed = set(mapping.drop)
    if mapping.keep_only is not None:
        removed |= set(cats["name"]) - set(mapping.keep_only)
    if removed:
        gone_ids = set(cats[cats["name"].isin(removed)]["category_id"])
        hit = anns["category_id"].isin(gone_ids)
        for r in anns[hit].itertuples():
            findings.append({"rule": "drop_class", "action": "dropped", "image_id": int(r.image_id),
                             "ann_id": int(r.ann_id), "detail": f"class id {r.category_id} removed by the mapping"})
        anns = anns[~hit]
        cats = cats[~cats["category_id"].isin(gone_ids)]
    cats = cats.sort_values("category_id").reset_index(drop=True)
    cats["label"] = range(len(cats))
    return DetectionDataset.build(ds.images, anns, cats), findings
