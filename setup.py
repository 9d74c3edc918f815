"""Only the build step that pyproject.toml cannot declare: the top-level configs/ tree (Hydra's config
folder, kept at the repository root) is copied into the built package as fsl/configs, so an installed
fsl finds its yaml files (fsl.configfiles.CONFIG_DIR). Editable installs read the checkout's configs/."""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONFIGS = Path(__file__).resolve().parent / "configs"


class BuildPyWithConfigs(build_py):
    def _config_files(self) -> list[tuple[Path, Path]]:
        dest = Path(self.build_lib) / "fsl" / "configs"
        return [(src, dest / src.relative_to(CONFIGS)) for src in sorted(CONFIGS.rglob("*"))
                if src.is_file() and "__pycache__" not in src.parts]

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        files = self._config_files()
        if not files:
            raise FileNotFoundError(f"{CONFIGS} holds no configs: build fsl from a full source tree")
        for src, dst in files:
            self.mkpath(str(dst.parent))
            self.copy_file(str(src), str(dst))

    def get_outputs(self, include_bytecode=1):
        extra = [] if getattr(self, "editable_mode", False) else [str(d) for _, d in self._config_files()]
        return super().get_outputs(include_bytecode) + extra


setup(cmdclass={"build_py": BuildPyWithConfigs})
