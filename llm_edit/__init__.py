"""llm-edit: edit and unlearn knowledge in Hugging Face causal language models."""
__version__ = "0.1.0"

from .facts import EditRequest, FactFileError, Neighbor, read_requests, write_requests  # noqa: E402
from .models import load_model  # noqa: E402
from .patch import WeightDelta, apply_patch, load_patch  # noqa: E402
from .api import EditResult, ForgetResult, edit, forget  # noqa: E402
from .forget_data import ForgetItem, read_items  # noqa: E402

__all__ = ["EditRequest", "EditResult", "FactFileError", "ForgetItem", "ForgetResult", "forget", "read_items", "Neighbor", "WeightDelta", "apply_patch",
           "edit", "load_model", "load_patch", "read_requests", "write_requests"]
