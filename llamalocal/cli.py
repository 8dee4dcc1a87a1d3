"""The `llamalocal` command."""
from __future__ import annotations

import platform

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="llamalocal")
def main() -> None:
    """Local, quantized LLM inference for CPUs and laptops."""


@main.command()
def sysinfo() -> None:
    """Show CPU features, the active kernel path, threads and backend."""
    try:
        from . import backend
    except RuntimeError as e:  # BackendError: a forced backend or ISA cannot be used here
        raise click.ClickException(str(e)) from None

    info = backend.info()
    click.echo(f"llamalocal {__version__} on {platform.machine()} ({platform.system()}), Python {platform.python_version()}")
    click.echo(f"backend:      {info['backend']}")
    click.echo(f"kernel path:  {info['active_isa']}")
    if info["backend"] == "native":
        click.echo(f"ISA paths:    {', '.join(info['available_isas'])} (best first; LLAMALOCAL_ISA forces one)")
        feats = info["cpu_features"]
        click.echo("CPU features: " + (" ".join(k for k, v in feats.items() if v) or "none of the SIMD extensions used"))
        click.echo(f"threads:      {info['threads']} (default {info['default_threads']}: physical cores)")
    else:
        click.echo(f"threads:      {info['threads']}")
        click.echo(f"why numba:    {info['fallback_reason']}")


if __name__ == "__main__":
    main()
