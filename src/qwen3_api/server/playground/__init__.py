"""GET /playground: a static chat page (HTML, JS, CSS shipped in the package) over our own OpenAI API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from qwen3_api.server.state import ServerState, server_state

STATIC_DIR = Path(__file__).resolve().parent / "static"

router = APIRouter()


@router.get("/playground", include_in_schema=False)
async def playground() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.get("/playground/status", include_in_schema=False)
async def playground_status(state: Annotated[ServerState, Depends(server_state)]) -> dict[str, Any]:
    """Loading progress for the page, always 200 (polling /health would log every 503 in the browser console)."""
    if state.engine is not None:
        return {"state": "ready", "model": state.model_name}
    if state.load_error is not None:
        return {"state": "failed", "model": state.model_name, "error": state.load_error}
    return {"state": "loading", "model": state.model_name}


def install_playground(app: FastAPI) -> None:
    """Serve the page at /playground and its files under /playground/static."""
    app.include_router(router)
    app.mount("/playground/static", StaticFiles(directory=STATIC_DIR), name="playground-static")
