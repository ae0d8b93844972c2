"""Kaggle: the push folders pass the kaggle package's own checks in KaggleApi.kernels_push (the network call is
replaced, nothing is pushed), and a notebook finds an earlier notebook's output attached as input."""
import contextlib
import io
import json
import pathlib
import re
import sys

import pytest

from medical_r1 import REPO_ROOT, artifacts
from medical_r1 import export as export_mod
from medical_r1.install import parse_requirements

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import build_kaggle  # noqa: E402

from medical_r1 import kaggle_folders  # noqa: E402


@pytest.fixture
def kaggle_api(monkeypatch):
    """The real KaggleApi with fake credentials; its client only records the request it would send."""
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "not-a-real-key")
    from kaggle.api.kaggle_api_extended import KaggleApi

    api, sent = KaggleApi(), []

    class Kernels:
        class kernels_api_client:  # noqa: N801 (the name kaggle calls)
            @staticmethod
            def save_kernel(request):
                sent.append(request)
                return request

    @contextlib.contextmanager
    def client():
        yield type("Client", (), {"kernels": Kernels})()

    monkeypatch.setattr(api, "build_kaggle_client", client)
    return api, sent


def push(api, folder) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        api.kernels_push(str(folder))
    return out.getvalue()


def test_every_push_folder_passes_kaggles_checks(tmp_path, kaggle_api):
    api, sent = kaggle_api
    dataset, *folders = build_kaggle.build("someone", tmp_path)
    assert dataset.name == "medical-r1-helpers"
    assert [f.name for f in folders] == [nb.stem for nb in sorted((REPO_ROOT / "notebooks").glob("0*.ipynb"))]
    for folder in folders:
        printed = push(api, folder)
        assert "does not resolve" not in printed  # the title gives the same URL slug as the id
    by_slug = {r.slug: r for r in sent}
    train = by_slug["someone/medical-r1-03-train"]
    assert train.kernel_type == "notebook" and train.language == "python"
    assert train.enable_gpu and train.enable_internet and train.is_private
    assert train.machine_shape == "NvidiaTeslaT4"
    assert train.kernel_data_sources == ["someone/medical-r1-02-format-dataset"]
    assert by_slug["someone/medical-r1-04-compare"].kernel_data_sources == [
        "someone/medical-r1-01-baseline-inference", "someone/medical-r1-02-format-dataset",
        "someone/medical-r1-03-train"]
    assert not by_slug["someone/medical-r1-02-format-dataset"].enable_gpu
    assert all(r.dataset_data_sources == ["someone/medical-r1-helpers"] for r in sent)  # the helpers, offline
    pushed = json.loads(train.text)
    tags = [c["metadata"].get("tags", []) for c in pushed["cells"]]
    assert sum("parameters" in t for t in tags) == 1 and all(not c.get("outputs") for c in pushed["cells"])


def test_the_repository_metadata_pushes_03_from_the_root(kaggle_api):
    api, sent = kaggle_api
    assert "does not resolve" not in push(api, REPO_ROOT)
    assert sent[0].slug.endswith("/medical-r1-03-train") and sent[0].machine_shape == "NvidiaTeslaT4"


def test_a_bad_user_name_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match="--user"):
        build_kaggle.build("Not A Name", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_kernel_sources_cover_every_file_a_notebook_reads():
    """Each notebook's inputs are earlier notebooks, and include the writer of every artifact it names."""
    order = list(artifacts.NOTEBOOK_INPUTS)
    for notebook, inputs in artifacts.NOTEBOOK_INPUTS.items():
        assert all(order.index(i) < order.index(notebook) for i in inputs)
        text = (REPO_ROOT / "notebooks" / f"{notebook}.py").read_text()
        for key, (_, writer) in artifacts.ARTIFACTS.items():
            if f'require_artifact(WORK_DIR, "{key}")' in text:
                assert writer in inputs, (notebook, key)


def test_an_attached_kaggle_output_is_copied_into_work_dir(tmp_path, monkeypatch):
    attached = tmp_path / "input" / "medical-r1-03-train" / "runs" / "medical-r1"
    (attached / "adapter").mkdir(parents=True)
    (attached / "adapter" / "adapter_config.json").write_text("{}")
    (attached / "train_metrics.json").write_text('{"model_name": "m"}')
    monkeypatch.setattr(artifacts, "KAGGLE_INPUT", tmp_path / "input")
    monkeypatch.chdir(tmp_path)
    assert (artifacts.require_artifact("runs/medical-r1", "adapter") / "adapter_config.json").read_text() == "{}"
    assert export_mod.merge_base_name("runs/medical-r1") == "m"  # the helpers that read artifacts find them too
    with pytest.raises(FileNotFoundError, match="attach your run of 04_compare under Add Input > Your Work"):
        artifacts.require_artifact("runs/medical-r1", "verdict")


@pytest.mark.parametrize("notebook", list(artifacts.NOTEBOOK_INPUTS))
def test_every_notebook_opens_in_kaggle_and_says_what_to_attach(notebook):
    """The header has an "Open in Kaggle" link in Kaggle's own form to this notebook in the repository of
    pyproject.toml, and its "On Kaggle" line names exactly the earlier notebooks whose outputs it reads."""
    import nbformat

    import set_repository

    header = nbformat.read(REPO_ROOT / "notebooks" / f"{notebook}.ipynb", as_version=4).cells[0].source
    repository = set_repository.current_repository()
    assert (f"(https://kaggle.com/kernels/welcome?src=https://github.com/{repository}/blob/main/notebooks/"
            f"{notebook}.ipynb)") in header
    line = next(text for text in header.splitlines() if text.startswith("**On Kaggle:**"))
    named = re.findall(r"`(\d\d_\w+)`", line)
    assert named == artifacts.NOTEBOOK_INPUTS[notebook] and ("nothing to attach" in line) == (not named)
    assert "Internet*: on" in line and ("GPU T4 x2" in line) == (notebook != "02_format_dataset")


def test_the_helpers_dataset_passes_kaggles_checks_and_holds_the_wheel(tmp_path, monkeypatch):
    """The dataset folder goes through the kaggle package's own dataset_create_new checks (the network calls
    replaced); its wheel holds src_helpers and every medical_r1 module, and requires requirements.txt's pins."""
    import zipfile

    from kaggle.api.kaggle_api_extended import KaggleApi
    from requests.exceptions import HTTPError

    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "not-a-real-key")
    api, uploaded, created = KaggleApi(), [], []
    api.authenticate()  # reads KAGGLE_USERNAME and KAGGLE_KEY; nothing goes over the network

    def not_found(ref):
        raise HTTPError("404")

    class Datasets:
        class dataset_api_client:  # noqa: N801 (the name kaggle calls)
            @staticmethod
            def create_dataset(request):
                created.append(request)
                return type("Response", (), {"error": "", "url": "https://kaggle.example"})()

    @contextlib.contextmanager
    def client():
        yield type("Client", (), {"datasets": Datasets})()

    monkeypatch.setattr(api, "dataset_status", not_found)
    monkeypatch.setattr(api, "upload_files", lambda request, resources, folder, *a, **k: uploaded.extend(
        sorted(p.name for p in pathlib.Path(folder).iterdir() if p.suffix == ".whl")))
    monkeypatch.setattr(api, "build_kaggle_client", client)
    folder = kaggle_folders.build("someone", tmp_path)[0]
    api.dataset_create_new(str(folder))
    assert created[0].owner_slug == "someone" and created[0].slug == "medical-r1-helpers" and created[0].is_private
    (wheel,) = uploaded
    with zipfile.ZipFile(folder / wheel) as z:
        names = set(z.namelist())
        meta = z.read(next(n for n in names if n.endswith("METADATA"))).decode()
    modules = {f"medical_r1/{p.name}" for p in (REPO_ROOT / "medical_r1").glob("*.py")}
    assert "src_helpers.py" in names and modules <= names
    requires = {line.split(": ", 1)[1].lower().replace("_", "-") for line in meta.splitlines()
                if line.startswith("Requires-Dist: ")}
    pins = parse_requirements(REPO_ROOT / "requirements.txt")
    assert requires == {f"{name}=={version}" for name, version in pins.items()}
