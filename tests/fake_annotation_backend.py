"""A labelling backend that lives in this process, registered like any custom FiftyOne backend.

FiftyOne builds a backend from ``fo.annotation_config.backends[<name>]["config_cls"]`` (a class
path), so a test registers ``{"config_cls": "fake_annotation_backend.FakeBackendConfig"}`` and
``view.annotate(..., backend=<name>)`` runs FiftyOne's real annotate()/load_annotations() code
against it. :data:`SERVER` plays the labelling server: an upload records what was sent under its
annotation key; a test puts the boxes an annotator "drew" under ``SERVER[key]["drawn"]``
(sample id -> ``[(label, [x, y, w, h]), ...]``) and the download returns them.
"""

from __future__ import annotations

from typing import Any

import fiftyone.core.labels as fol
import fiftyone.utils.annotations as foua

SERVER: dict[str, dict[str, Any]] = {}


class FakeBackendConfig(foua.AnnotationBackendConfig):
    def __init__(self, name, label_schema, media_field="filepath", url=None, **kwargs):
        super().__init__(name, label_schema, media_field=media_field, **kwargs)
        self.url = url


class FakeBackend(foua.AnnotationBackend):
    @property
    def supported_media_types(self):
        return ["image"]

    @property
    def supported_label_types(self):
        return ["detections"]

    @property
    def supported_scalar_types(self):
        return []

    @property
    def supported_attr_types(self):
        return ["text"]

    @property
    def supports_keyframes(self):
        return False

    @property
    def supports_video_sample_fields(self):
        return False

    @property
    def requires_label_schema(self):
        return True

    def recommend_attr_tool(self, name, value):
        return {"type": "text"}

    def requires_attr_values(self, attr_type):
        return False

    def upload_annotations(self, samples, anno_key, launch_editor=False):
        SERVER[anno_key] = {
            "sample_ids": samples.values("id"),
            "filepaths": samples.values("filepath"),
            "label_schema": self.config.label_schema,
            "launch_editor": launch_editor,
            "url": self.config.url,
            "drawn": {},
        }
        return foua.AnnotationResults(samples, self.config, anno_key, {}, backend=self)

    def download_annotations(self, results):
        drawn = SERVER[results.key]["drawn"]
        field = next(iter(self.config.label_schema))
        dets = {
            sid: {(d := fol.Detection(label=label, bounding_box=box)).id: d for label, box in boxes}
            for sid, boxes in drawn.items()
        }
        return {field: {"detections": dets}}
