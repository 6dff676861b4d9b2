"""The three reports of a run: text by section (standard output), JSON (--json) and one
self-contained HTML page (--html, after Autobahn|Testsuite's: a summary, then every case with
its verdict, what the contract says and the wire transcript)."""
import html
import json
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

from tools.conformance.case import SECTION_TITLES, SECTIONS

VERDICTS = ("PASS", "FAIL", "WARN")


@dataclass
class Result:
    id: str
    section: str
    title: str
    verdict: str                    # PASS, FAIL or WARN
    message: str = ""               # what differed (FAIL, WARN)
    contract: str = ""              # the contract's words on it
    hint: str = ""                  # FAIL: the usual cause
    ours: str = ""                  # WARN: the reading docs/PROTOCOL.md settles on
    theirs: str = ""                # WARN: the reading the server took
    seconds: float = 0.0
    transcript: List[Tuple[str, str, str]] = field(default_factory=list)


def counts(results: List[Result]) -> Dict[str, int]:
    return {v: sum(1 for r in results if r.verdict == v) for v in VERDICTS}


def closing_line(results: List[Result]) -> str:
    c = counts(results)
    return "%d passed, %d failed, %d warnings" % (c["PASS"], c["FAIL"], c["WARN"])


def by_section(results: List[Result]) -> List[Tuple[str, List[Result]]]:
    return [(key, [r for r in results if r.section == key]) for key, _ in SECTIONS
            if any(r.section == key for r in results)]


def text_report(results: List[Result], target: str, show_transcripts: bool = True) -> str:
    """The report by section; a FAIL or WARN with its reasons and, for a FAIL, the
    transcript of the bytes sent (>) and received (<)."""
    out = ["Conformance of %s to docs/PROTOCOL.md" % target, ""]
    for key, section in by_section(results):
        out.append("== %s" % SECTION_TITLES[key])
        for r in section:
            out.append("  %-4s  %-20s %s" % (r.verdict, r.id, r.title))
            if r.verdict == "PASS":
                continue
            out.append("        why: %s" % r.message)
            if r.ours:
                out.append("        our reading: %s; this server's: %s" % (r.ours, r.theirs))
            if r.contract:
                out.append("        the contract: \"%s\"" % r.contract)
            if r.hint and r.verdict == "FAIL":
                out.append("        usual cause: %s" % r.hint)
            if r.verdict == "FAIL" and show_transcripts and r.transcript:
                out.append("        transcript (> sent, < received):")
                out.extend("          %-8s %s %s" % line for line in r.transcript)
        out.append("")
    out.append(closing_line(results))
    return "\n".join(out) + "\n"


def json_report(results: List[Result], target: str, transport: str, strict: bool) -> str:
    c = counts(results)
    return json.dumps({"target": target, "transport": transport, "strict": strict,
                       "passed": c["PASS"], "failed": c["FAIL"], "warnings": c["WARN"],
                       "cases": [asdict(r) for r in results]}, indent=1) + "\n"


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em;
  border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; width: 100%; table-layout: fixed; }
col.v { width: 5.5em; } col.id { width: 11.5em; } col.s { width: 4.5em; }
td.s { white-space: nowrap; text-align: right; color: #777; }
ul.first li { margin: .3em 0; }
td, th { padding: .3em .6em; text-align: left; vertical-align: top; }
tr.case { border-top: 1px solid #eee; }
.v { font-weight: bold; color: #fff; border-radius: 3px; padding: .1em .5em; }
.PASS { background: #2e7d32; } .FAIL { background: #c62828; } .WARN { background: #ef8f00; }
.id { font-family: monospace; white-space: nowrap; }
.summary span { margin-right: 1.5em; font-size: 1.1em; }
.why { margin: .3em 0; } .contract { margin: .3em 0; padding: .3em .8em; background: #f4f4f4;
  border-left: 4px solid #888; font-style: italic; }
pre { background: #1e1e1e; color: #ddd; padding: .6em; overflow-x: auto; font-size: .85em; }
pre { white-space: pre-wrap; }
.sent { color: #9cdcfe; } .recv { color: #ce9178; } .note { color: #b5cea8; }
.legend { color: #555; font-size: .9em; }
"""


def _case_html(r: Result) -> str:
    e = html.escape
    parts = ['<tr class="case" id="%s"><td><span class="v %s">%s</span></td>'
             '<td class="id">%s</td><td>%s' % (e(r.id), r.verdict, r.verdict, e(r.id),
                                               e(r.title))]
    if r.message:
        parts.append('<div class="why"><b>What happened:</b> %s</div>' % e(r.message))
    if r.ours:
        parts.append('<div class="why"><b>Our reading:</b> %s.<br><b>This server\'s:</b> %s.'
                     '</div>' % (e(r.ours), e(r.theirs)))
    if r.contract:
        parts.append('<div class="contract">The contract says: &ldquo;%s&rdquo;</div>'
                     % e(r.contract))
    if r.hint and r.verdict == "FAIL":
        parts.append('<div class="why"><b>Usual cause:</b> %s</div>' % e(r.hint))
    if r.transcript:
        lines = ['<span class="%s">%-8s %s %s</span>' % (
            {">": "sent", "<": "recv"}.get(way, "note"), e(who), e(way), e(text))
            for who, way, text in r.transcript]
        parts.append('<details%s><summary>Wire transcript (%d lines; &gt; sent by the tester, '
                     '&lt; received from the server)</summary><pre>%s</pre></details>' % (
                         "" if r.verdict == "PASS" else " open", len(lines), "\n".join(lines)))
    parts.append('</td><td class="s">%.2f s</td></tr>' % r.seconds)
    return "".join(parts)


def _first_html(results: List[Result]) -> List[str]:
    """The cases to look at first, FAILs then WARNs, each linked to its details."""
    e = html.escape
    items = ['<li><span class="v %s">%s</span> <a href="#%s">%s</a>: %s</li>' % (
        r.verdict, r.verdict, e(r.id), e(r.id), e(r.message.split("\n")[0]))
        for verdict in ("FAIL", "WARN") for r in results if r.verdict == verdict]
    if not items:
        return []
    return ["<h2>To look at first</h2>", '<ul class="first">'] + items + ["</ul>"]


def html_report(results: List[Result], target: str, transport: str,
                command: Optional[str] = None) -> str:
    """One page, no outside resources: the summary, then every case by section."""
    e, c = html.escape, counts(results)
    body = ["<h1>Chat protocol conformance: %s (%s)</h1>" % (e(target), e(transport)),
            '<p class="summary"><span class="v PASS">%d passed</span> '
            '<span class="v FAIL">%d failed</span> <span class="v WARN">%d warnings</span></p>'
            % (c["PASS"], c["FAIL"], c["WARN"]),
            '<p class="legend">Each case checks one rule of the protocol contract '
            '(docs/PROTOCOL.md). PASS: the server does what the contract says. FAIL: it does '
            'not; the case shows what the contract says and every byte sent and received. '
            'WARN: the course\'s text can be read two ways and this server took the other '
            'reading; both are named.%s</p>' % (
                " Command: <code>%s</code>" % e(command) if command else "")]
    body.extend(_first_html(results))
    for key, section in by_section(results):
        body.append('<h2>%s</h2><table><colgroup><col class="v"><col class="id"><col>'
                    '<col class="s"></colgroup>' % e(SECTION_TITLES[key]))
        body.extend(_case_html(r) for r in section)
        body.append("</table>")
    body.append("<p><b>%s</b></p>" % e(closing_line(results)))
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<title>Conformance: %s</title><style>%s</style></head><body>\n%s\n</body></html>\n'
            % (e(target), STYLE, "\n".join(body)))
