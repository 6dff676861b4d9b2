"""The structure a student is promised (docs/ARCHITECTURE.md), checked on the code as it is.

These tests read the server's modules as text (ast); they run nothing. They fail when a change
lets the loop learn about chat, makes an import point up a layer, or grows a module, class or
function past the size a reader can hold in mind. Tests, tools and benchmarks are not the
server, and are not held to these sizes.
"""
import ast
import pathlib
import unittest

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Which of the project's modules each layer may import, bottom to top (docs/ARCHITECTURE.md,
# "The layers"). A name is a top-level module or package of this repository.
MAY_IMPORT = {
    "reactor": set(),                                       # the loop knows nothing of ours
    "policy": {"policy"},                                   # pure rules
    "sansio": {"policy", "sansio"},                         # byte and state machines
    "rooms": {"policy", "sansio"},
    "protocol": {"policy", "sansio", "rooms"},
    "cluster": {"policy", "sansio", "rooms", "protocol", "cluster"},
    "transport": {"reactor", "policy", "sansio", "transport"},  # never the chat layers
    "Server": {"reactor", "policy", "sansio", "rooms", "protocol", "cluster", "transport"},
}
OURS = set(MAY_IMPORT)

TOP_LEVEL = {"Server.py", "reactor.py", "protocol.py", "rooms.py", "test_server.py",
             "compile.sh", "start.sh", "README.md"}
FOLDERS = {"policy", "sansio", "cluster", "transport", "tools", "tests", "bench", "docs"}

MAX_LOOP_LINES = 400        # reactor.py, docstring included
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 400
MAX_FUNCTION_LINES = 50
MAX_README_LINES = 250


def server_modules():
    """(layer, path) of every module of the server: the top-level ones and the layers' folders,
    not tests, tools or benchmarks."""
    for name in ("Server", "reactor", "protocol", "rooms"):
        yield name, ROOT / (name + ".py")
    for package in ("policy", "sansio", "cluster", "transport"):
        for path in sorted((ROOT / package).glob("*.py")):
            yield package, path


def imported_layers(tree):
    """The project's top-level names that `tree` imports (at any depth: a lazy import counts)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(name.split(".")[0] for name in names if name.split(".")[0] in OURS)
    return found


def line_count(path):
    return len(path.read_text(encoding="utf-8").splitlines())


class LayoutTests(unittest.TestCase):
    def test_the_top_level_holds_only_the_promised_files_and_folders(self):
        entries = {p.name for p in ROOT.iterdir() if not p.name.startswith(".")
                   and p.name != "__pycache__"}
        self.assertEqual(entries - FOLDERS, TOP_LEVEL)

    def test_the_loop_imports_nothing_of_the_project(self):
        tree = ast.parse((ROOT / "reactor.py").read_text(encoding="utf-8"))
        self.assertEqual(imported_layers(tree), set())

    def test_imports_point_only_down_the_layers(self):
        upward = []
        for layer, path in server_modules():
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for other in sorted(imported_layers(tree) - MAY_IMPORT[layer] - {layer}):
                upward.append("%s imports %s" % (path.relative_to(ROOT), other))
        self.assertEqual(upward, [])


class SizeTests(unittest.TestCase):
    def test_the_loop_fits_in_one_sitting(self):
        self.assertLessEqual(line_count(ROOT / "reactor.py"), MAX_LOOP_LINES)

    def test_no_module_class_or_function_is_too_long_to_hold_in_mind(self):
        too_long = []
        for _layer, path in server_modules():
            where = str(path.relative_to(ROOT))
            if line_count(path) > MAX_MODULE_LINES:
                too_long.append("%s: %d lines" % (where, line_count(path)))
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef):
                    limit = MAX_CLASS_LINES
                elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    limit = MAX_FUNCTION_LINES
                else:
                    continue
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    too_long.append("%s:%d %s: %d lines" % (where, node.lineno, node.name, length))
        self.assertEqual(too_long, [])

    def test_the_readme_is_a_front_door_not_a_manual(self):
        self.assertLessEqual(line_count(ROOT / "README.md"), MAX_README_LINES)


if __name__ == "__main__":
    unittest.main()
