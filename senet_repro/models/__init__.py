"""The seven SE networks of the Caffe release (hujie-frank/SENet) as plain PyTorch modules."""

from .caffe_mapping import (
    CaffeMappingError,
    caffe_layer_map,
    caffe_to_state_dict,
    recognise_model,
    state_dict_to_caffe,
)
from .checkpoint import Checkpoint, Header, read_checkpoint
from .inception import SEBNInception, se_bn_inception
from .registry import (
    ALIASES,
    UnknownModelError,
    get_model,
    list_models,
    load_weights,
    meta_model,
    read_weights,
    register_model,
    resolve_name,
    weights_for,
)
from .senet import (
    SENet,
    se_resnet50,
    se_resnet101,
    se_resnet152,
    se_resnext50_32x4d,
    se_resnext101_32x4d,
    senet154,
)
from .timm_layout import from_timm_state_dict, timm_model_name, to_timm_state_dict
from .weights import CaffeWeights, SENetWeights

__all__ = [
    "ALIASES",
    "CaffeMappingError",
    "Checkpoint",
    "Header",
    "CaffeWeights",
    "SEBNInception",
    "SENet",
    "SENetWeights",
    "UnknownModelError",
    "caffe_layer_map",
    "caffe_to_state_dict",
    "from_timm_state_dict",
    "get_model",
    "list_models",
    "load_weights",
    "meta_model",
    "read_checkpoint",
    "read_weights",
    "recognise_model",
    "register_model",
    "resolve_name",
    "se_bn_inception",
    "se_resnet50",
    "se_resnet101",
    "se_resnet152",
    "se_resnext50_32x4d",
    "se_resnext101_32x4d",
    "senet154",
    "state_dict_to_caffe",
    "timm_model_name",
    "to_timm_state_dict",
    "weights_for",
]
