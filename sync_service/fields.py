"""A pipeline's custom fields against the account's: which exist, which to create, what clashes.

A field written as a table (``[pipelines.mapping.fields.<merge_tag>]`` with ``column``, ``type``
and ``name``) is created when the account lacks it; a field written as ``tag = "column"`` must
already exist. Everything is checked before anything is created, so a configuration that cannot
work creates nothing:

- an existing field whose data type differs from the declared one is a ``ConfigError`` naming
  both types (Mailtrap cannot change a field's type);
- a field to create whose display name another field already uses is a ``ConfigError``;
- the account's limit of 40 custom fields is checked on the fields it has plus those to create.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from sync_service.errors import ConfigError
from sync_service.mailtrap.client import ContactField, MailtrapClient
from sync_service.settings import PipelineSettings

log = structlog.get_logger(__name__)
MAX_FIELDS = 40  # custom fields per Mailtrap account


@dataclass(frozen=True, slots=True)
class NewField:
    """A field the pipeline declares and the account lacks."""

    merge_tag: str
    name: str
    data_type: str


@dataclass
class FieldPlan:
    """merge tag → data type for every mapped field that exists or will, and what to create."""

    types: dict[str, str] = field(default_factory=dict)
    to_create: list[NewField] = field(default_factory=list)


def plan_fields(pipeline: PipelineSettings, existing: Sequence[ContactField]) -> FieldPlan:
    """Compare the declared fields with the account's; raise ConfigError on what cannot work."""
    by_tag = {f.merge_tag: f for f in existing}
    names = {f.name.casefold(): f.merge_tag for f in existing}
    plan = FieldPlan(types={f.merge_tag: f.data_type for f in existing})
    problems: list[str] = []
    for tag, spec in sorted(pipeline.mapping.declared.items()):
        found = by_tag.get(tag)
        if found is not None:
            if spec.type is not None and found.data_type != spec.type:
                problems.append(f"field {tag} exists in Mailtrap as {found.data_type}, the "
                                f"mapping declares {spec.type} (Mailtrap cannot change a "
                                "field's type: rename the merge tag or change the mapping)")
            continue
        new = NewField(tag, spec.name or tag, spec.type or "text")
        owner = names.get(new.name.casefold())
        if owner is not None:
            problems.append(f"field {tag}: the name {new.name!r} is taken by the existing field "
                            f"{owner} (set another `name`)")
            continue
        names[new.name.casefold()] = tag
        plan.to_create.append(new)
        plan.types[tag] = new.data_type
    if len(existing) + len(plan.to_create) > MAX_FIELDS:
        problems.append(f"creating {len(plan.to_create)} field(s) would give the account "
                        f"{len(existing) + len(plan.to_create)}, over Mailtrap's limit of "
                        f"{MAX_FIELDS} custom fields")
    if problems:
        raise ConfigError(f"pipeline {pipeline.name}: mapping.fields: " + "; ".join(problems))
    return plan


def create_fields(client: MailtrapClient, pipeline: PipelineSettings, plan: FieldPlan) -> None:
    """Create the planned fields, in merge-tag order."""
    for new in plan.to_create:
        created = client.create_field(new.name, new.merge_tag, new.data_type)
        log.info("field.created", pipeline=pipeline.name, merge_tag=created.merge_tag,
                 data_type=created.data_type, field_id=created.id)
    plan.to_create.clear()
