"""Tools agents may call: `@avm.tool`, the registry, and capability grants (avm.tools.registry)."""

from __future__ import annotations

from avm.tools.registry import (
    Tool,
    ToolDefinitionError,
    ToolDenied,
    ToolError,
    ToolRegistry,
    ToolResult,
    ToolStatistics,
    error_value,
    is_error_value,
    schema_from_signature,
    tool,
    validate,
)

__all__ = ["Tool", "ToolDefinitionError", "ToolDenied", "ToolError", "ToolRegistry", "ToolResult",
           "ToolStatistics", "error_value", "is_error_value", "schema_from_signature", "tool", "validate"]
