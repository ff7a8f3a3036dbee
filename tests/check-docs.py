#!/usr/bin/env python3
"""Checks that the documents name only things the tree has: paths, functions, llepd's config
keys, llepctl's verbs, the tools' long options and llepd's metrics.

    check-docs.py [--root DIR]     checks the documents of the tree at DIR (default: this
                                   script's repository)
    check-docs.py --self-test      checks small built-in samples, a good and a bad one per rule,
                                   against this tree's tables (a sample on a real page changes
                                   one line of it and must add the expected report)

Exit status 0 when every reference holds, 1 when one does not (each is printed as
FILE:LINE: what is wrong), 2 for bad arguments.

The documents: docs/ARCHITECTURE.md, README.md and packaging/man/*.in get every rule;
packaging/llepd.conf only the keys rule; docs/PERFORMANCE.md only the path rule (its prose
quotes commands as they were run, with the options of their day). Man pages are read as
rendered: escapes such as \\- and \\fB dropped, the arguments of .BR-style macros joined as
troff joins them.

The rules:
  paths     A word with a '/' whose first part is a top-level entry of the tree
            (daemon/server/space.c, tests/, scripts/demo.sh) must exist; '*' and '?' glob.
            Other words with a '/' that end in a source extension (.c .h .cu .cuh .py .sh
            .proto .sym) must be the tail of a tree path (server/space.c, llep/client.h); a
            bare source file name (plan-cost.c) must be some file's name. Not checked:
            absolute paths (/var, /run, /etc, /tmp, ...), words after '$' or '@' ($OUT/x,
            @sysconfdir@/llep), URLs, build folders (build/, build-*/, builddir/), words with an
            upper-case placeholder part (FILE, DIR, NAME.c), headers in <...>, system headers
            and files made at build time (GENERATED, and every output: of a meson.build).
  calls     A call written in backticks in Markdown (`llep__plan_run()`, `ops->sync()`,
            `turn_begin/end()` naming two) or with an '_' in a man page (llep_connect()) must
            name something the C sources (.c .h .cu .cuh; comments and strings left out) write
            followed by '(': a definition, declaration, call or function-like macro. A dotted
            call (`llep.connect()`) may instead be a Python def. Fenced code blocks are
            examples, not read for calls.
  names     A name with an '_' or in CamelCase in backticks (Markdown) or bold (man), such as
            a field, macro, enum value, protocol message or environment variable
            (`devices_per_node`, `ClusterPlanHash`, LLEPD_TEST_XNODE), is a word of the
            sources (.c .h .cu .cuh .py .sh .proto .sym, meson.build, the files of packaging/
            such as the systemd units), unless it is a prefix (`LLEP_PB__`,
            `llep__devices_turn_*`) or another project's (FOREIGN_NAMES).
  keys      llepd's config keys (daemon/core/config-keys.c, llep__config_keys), the KEYS of
            llepd.conf(5) and the keys of the sample packaging/llepd.conf (set or commented
            out) are the same set, and every key is an option in llepd(8)'s OPTIONS. A
            `key = value` in backticks (Markdown) or bold (man) whose key has a '-' must be a
            key; so must a word in backticks next to the word "key" ("the `model` key").
            snake_case words before '=' are struct fields, not keys.
  verbs     `llepctl VERB` in backticks or a code block (Markdown), or anywhere in a man page,
            names a verb of tools/llepctl.c's table (options before the verb skipped); the
            KEY of `llepctl set [LAYER] KEY=VALUE` is one llep__setting_parse() knows.
  options   A --option after a tool's name in the same backtick span, code line (with '\\'
            continuations) or man line belongs to that tool (llepd, llepctl, llep-bench,
            llep-plan, llep-demo) and must be in its getopt long-option array (llepd: its
            config keys, --config, --help, --version). Other --options in a man page belong to
            the page's tool (llepd.conf(5): llepd's); other --options in backticks must be a
            long option of some program or script of the tree. The other way, each long option
            of a tool is named in its man page.
  sections  A man page section named after "see" or "section" (see CALIBRATION, section
            FAILED DEVICES) is a .SH of some man page; "section 6.2" in docs/ARCHITECTURE.md
            (or a line naming it) is a heading there, unless DESIGN.md's.
  metrics   Each llep_* series named in llepd(8)'s METRICS section is one that
            daemon/server/metrics.c writes, and each family it writes is named there.
Not checked: what the prose says a function, key or option does; option values and short
options; names in Markdown prose outside backticks (llepctl verbs, options, calls); in which
file a function is said to live; whether a SYNOPSIS lists every option; options of programs
other than the five tools; Python examples in code blocks; docs/PERFORMANCE.md beyond paths.
"""
import argparse
import fnmatch
import glob
import os
import re
import sys

SEEN = {'paths': 0, 'calls': 0, 'names': 0, 'keys': 0, 'verbs': 0, 'options': 0, 'metrics': 0,
        'sections': 0}
SKIP_DIRS = {'.git', '.venv', '__pycache__', 'subprojects', 'node_modules'}
SOURCE_EXT = ('.c', '.h', '.cu', '.cuh', '.py', '.sh', '.proto', '.sym')
C_EXT = ('.c', '.h', '.cu', '.cuh')
# Made at build time, so not in the tree (besides the outputs named in meson.build files).
GENERATED = {'llep.pb-c.h', 'llep.pb-c.c', 'llep-config.h', 'llep_pb2.py'}
# Headers and files of the system and of libraries the docs name.
SYSTEM_FILES = {'uv.h', 'cuda.h', 'cuda_runtime.h', 'cuda_runtime_api.h', 'nccl.h',
                'cublas_v2.h', 'stdatomic.h', 'pthread.h', 'json-c/json.h', 'json.h',
                'microhttpd.h', 'check.h', 'protobuf-c.h', 'protobuf-c/protobuf-c.h',
                'sd-daemon.h', 'systemd/sd-daemon.h', 'unistd.h', 'stdio.h', 'stdlib.h',
                'string.h', 'errno.h', 'sys/mman.h', 'linux/memfd.h', 'sys/socket.h',
                'setup.py', 'conftest.py'}
TOOLS = {
    'llepd': None,  # its config keys (llep__config_keys) and config, help, version
    'llepctl': 'tools/llepctl.c',
    'llep-bench': 'tools/llep-bench.c',
    'llep-plan': 'tools/llep-plan.c',
    'llep-demo': 'tools/llep-demo.c',
}
PAGE_TOOL = {'llepd.8.in': 'llepd', 'llepd.conf.5.in': 'llepd', 'llepctl.1.in': 'llepctl',
             'llep-bench.1.in': 'llep-bench', 'llep-plan.1.in': 'llep-plan',
             'llep-demo.1.in': 'llep-demo'}


# ---------------------------------------------------------------------------------------------
# What the tree has.

def is_build_dir(name):
    return name in ('build', 'builddir', '_build') or name.startswith('build-')


def walk(root):
    """Paths of the tree (files and folders, relative, '/'-separated), build folders left
    out."""
    paths = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root).replace(os.sep, '/')
        dirnames[:] = [d for d in dirnames
                       if d not in SKIP_DIRS and not (rel == '.' and is_build_dir(d))]
        for n in dirnames + filenames:
            paths.add(n if rel == '.' else rel + '/' + n)
    return paths


def strip_c(text):
    """C text without comments, string and character literals (same line count)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith('/*', i):
            j = text.find('*/', i + 2)
            j = n if j < 0 else j + 2
            out.append('\n' * text.count('\n', i, j))
            i = j
        elif text.startswith('//', i):
            j = text.find('\n', i)
            i = n if j < 0 else j
        elif c in '"\'':
            j = i + 1
            while j < n and text[j] != c and text[j] != '\n':
                j += 2 if text[j] == '\\' else 1
            out.append(' ')
            i = j + 1
        else:
            out.append(c)
            i += 1
    return ''.join(out)


def block(text, start_re):
    """The text of the brace-enclosed initializer after the first match of start_re."""
    m = re.search(start_re, text)
    if not m:
        return ''
    i = text.index('{', m.end() - 1)
    depth = 0
    for j in range(i, len(text)):
        if text[j] == '{':
            depth += 1
        elif text[j] == '}':
            depth -= 1
            if depth == 0:
                return text[i:j + 1]
    return text[i:]


def read(root, rel):
    with open(os.path.join(root, rel), encoding='utf-8', errors='replace') as f:
        return f.read()


class Tree:
    def __init__(self, root):
        self.root = root
        self.paths = walk(root)
        self.names = {p.rsplit('/', 1)[-1] for p in self.paths}
        # Files meson makes: output: 'llep-client.h' in a meson.build.
        self.generated = set(GENERATED)
        for p in self.paths:
            if p.endswith('meson.build'):
                self.generated.update(re.findall(r"\boutput\s*:\s*\[?\s*'([^'@]+)'",
                                                 read(root, p)))
        self.top = {p for p in self.paths if '/' not in p}
        self.c_calls = set()
        self.words = set()
        self.py_defs = set()
        self.any_options = set()
        for p in self.paths:
            # This script's samples name what the tree lacks.
            if p == 'tests/check-docs.py' or not os.path.isfile(os.path.join(root, p)):
                continue
            if p.endswith(SOURCE_EXT + ('.build',)) or (
                    p.startswith('packaging/') and not p.startswith('packaging/man/')):
                self.words.update(re.findall(r'\w+', read(root, p)))
            if p.endswith(C_EXT):
                text = read(root, p)
                self.c_calls.update(re.findall(r'\b([A-Za-z_]\w*)\s*\(', strip_c(text)))
                self.any_options.update(re.findall(
                    r'\{\s*"([\w-]+)"\s*,\s*(?:no|required|optional)_argument', text))
                self.any_options.update(re.findall(r'"--([a-z][\w-]*)', text))
            elif p.endswith('.py'):
                text = read(root, p)
                self.py_defs.update(re.findall(r'^\s*def\s+(\w+)', text, re.M))
                self.any_options.update(re.findall(r'add_argument\(\s*[\'"]--([a-z][\w-]*)',
                                                   text))
            elif p.endswith('.sh'):
                # case "$1" in --minutes) ...
                self.any_options.update(re.findall(r'(?<![\w-])--([a-z][\w-]*)[|)]',
                                                   read(root, p)))
        keys_c = read(root, 'daemon/core/config-keys.c')
        self.config_keys = re.findall(r'\{\s*"([\w-]+)"\s*,\s*"',
                                      block(keys_c, r'llep__config_keys\[\]\s*=\s*\{'))
        at = keys_c.find('llep__setting_parse(')
        self.settings = set(re.findall(r'strcmp\(key,\s*"([\w-]+)"\)',
                                       keys_c[at:keys_c.find('\n}\n', at)] if at >= 0 else ''))
        ctl = read(root, 'tools/llepctl.c')
        self.verbs = set(re.findall(r'\{\s*"(\w+)"\s*,\s*\d',
                                    block(ctl, r'\bverbs\[\]\s*=\s*\{')))
        self.options = {}
        for tool, src in TOOLS.items():
            if src is None:
                self.options[tool] = set(self.config_keys) | {'config', 'help', 'version'}
            else:
                self.options[tool] = set(re.findall(
                    r'\{\s*"([\w-]+)"\s*,',
                    block(read(root, src), r'struct option\s+\w+\[\]\s*=\s*\{')))
        self.any_options |= set().union(*self.options.values())
        self.man_sections = set()
        for p in glob.glob(os.path.join(root, 'packaging/man/*.in')):
            self.man_sections.update(unescape(m).strip('"') for m in re.findall(
                r'^\.SH\s+(.+)$', read(root, os.path.relpath(p, root)), re.M))
        arch = read(root, 'docs/ARCHITECTURE.md') \
            if os.path.isfile(os.path.join(root, 'docs/ARCHITECTURE.md')) else ''
        self.arch_sections = set(re.findall(r'^#+\s+(\d+(?:\.\d+)*)\.?\s', arch, re.M))
        metrics = read(root, 'daemon/server/metrics.c') \
            if 'daemon/server/metrics.c' in self.paths else ''
        self.metric_families = set(re.findall(r'\bfamily\(\s*\w+\s*,\s*"(llep_\w+)"', metrics))
        self.metric_strings = set(re.findall(r'"(llep_\w+)', metrics))

    def exists(self, path):
        path = path.rstrip('/')
        if any(ch in path for ch in '*?['):
            return any(fnmatch.fnmatchcase(p, path) for p in self.paths)
        return path in self.paths


# ---------------------------------------------------------------------------------------------
# Reading the documents: each yields (line number, text, code segments, context).

def md_lines(text):
    """Markdown lines as (number, text, code segments, in a fence). A fenced line is one code
    segment; elsewhere each backtick span is one."""
    fence = False
    for no, line in enumerate(text.split('\n'), 1):
        if line.lstrip().startswith('```'):
            fence = not fence
            continue
        if fence:
            yield no, line, [line], True
        else:
            yield no, line, re.findall(r'`([^`]+)`', line), False


FONT_RE = re.compile(r'\\f(\(..|\[[^\]]*\]|.)')
ARG_RE = re.compile(r'"((?:[^"]|"")*)"|(\S+)')


def unescape(s):
    s = FONT_RE.sub('', s)
    for a, b in (('\\-', '-'), ('\\(em', ' - '), ('\\(en', '-'), ('\\(aq', "'"),
                 ('\\(dq', '"'), ('\\&', ''), ('\\|', ''), ('\\ ', ' '), ('\\e', '\\'),
                 ('\\~', ' '), ('\\^', '')):
        s = s.replace(a, b)
    return s


def man_lines(text):
    """Man page lines rendered: (number, text, bold parts, section)."""
    section = ''
    for no, line in enumerate(text.split('\n'), 1):
        if line.startswith(('.\\"', "'\\\"")):
            continue
        bold = re.findall(r'\\fB(.*?)\\f[PR]', line)
        m = re.match(r'^\.([A-Z]{1,2})\b\s*(.*)$', line)
        if m:
            macro, rest = m.groups()
            args = [q if q else a for q, a in ARG_RE.findall(rest)]
            if macro in ('SH', 'SS'):
                section = unescape(' '.join(args))
            if macro in ('BR', 'BI', 'IB', 'IR', 'RI', 'RB'):
                first_bold = macro[0] == 'B'
                bold += [a for i, a in enumerate(args) if (i % 2 == 0) == first_bold]
                rendered = ''.join(args)
            else:
                if macro == 'B':
                    bold.append(' '.join(args))
                rendered = ' '.join(args)
        else:
            rendered = line
        yield no, unescape(rendered), [unescape(b) for b in bold], section


# ---------------------------------------------------------------------------------------------
# The rules.

COMPILER_RE = re.compile(r'\b(cc|gcc|clang)\s')
PATH_RE = re.compile(r'(?<![\w/$@~.:\\-])([\w.*?+-]+(?:/[\w.*?+-]+)*/?)')


def check_paths(tree, doc, no, text, errors):
    for m in PATH_RE.finditer(text):
        word = m.group(1).rstrip('.').rstrip(',')
        start = m.start(1)
        if start > 0 and text[start - 1] == '<':
            continue
        if text[m.end(1):m.end(1) + 3] == '://':
            continue
        parts = [p for p in word.split('/') if p]
        if not parts:
            continue
        if any(re.fullmatch(r'[A-Z][A-Z0-9_]*(\.[\w]+)?', p) for p in parts):
            continue
        if '/' not in word and COMPILER_RE.search(text[:start]):
            continue  # the reader's own program: cc prog.c $(pkg-config ...)
        if '/' in word:
            if parts[0] in tree.top:
                SEEN['paths'] += 1
                # A program built from tools/X.c is named tools/X (a ninja target).
                if not tree.exists(word) and not any(
                        tree.exists(word + e) for e in ('.c', '.cu')):
                    errors.append('%s:%d: no such path %s' % (doc, no, word))
                continue
            if is_build_dir(parts[0]) or not word.endswith(SOURCE_EXT):
                continue
            if word in SYSTEM_FILES or parts[-1] in tree.generated:
                continue
            SEEN['paths'] += 1
            if not any(p.endswith('/' + word) for p in tree.paths):
                errors.append('%s:%d: no path ends in %s' % (doc, no, word))
        elif word.endswith(SOURCE_EXT) and re.match(r'\w', word) and '.' in word[1:]:
            SEEN['paths'] += 1
            if word in tree.names or word in tree.generated or word in SYSTEM_FILES:
                continue
            if any(ch in word for ch in '*?') and \
                    any(fnmatch.fnmatchcase(n, word) for n in tree.names):
                continue
            errors.append('%s:%d: no file named %s' % (doc, no, word))


# Notation, not C: `min(P, CPUs)`.
NOT_CALLS = {'min', 'max'}
CALL_RE = re.compile(r'(\.|->)?\b([A-Za-z_]\w*)((?:/\w+)*)\(')


def check_calls(tree, doc, no, segments, man, errors):
    for seg in segments:
        for m in CALL_RE.finditer(seg):
            dotted, name, alts = m.groups()
            if man and ('_' not in name or re.match(r'\(\d\w*\)', seg[m.end() - 1:])):
                continue
            names = [name]
            if alts:
                # turn_begin/end() names turn_begin and turn_end.
                stem = name.rsplit('_', 1)[0] + '_' if '_' in name else ''
                names += [stem + a for a in alts.split('/') if a]
            for n in names:
                if n in NOT_CALLS:
                    continue
                SEEN['calls'] += 1
                if n in tree.c_calls or (dotted == '.' and n in tree.py_defs):
                    continue
                errors.append('%s:%d: %s() is not in the C sources' % (doc, no, n))


# Names of other projects the documents quote (environment variables, kernel modules).
FOREIGN_NAMES = {'UV_THREADPOOL_SIZE', 'NCCL_IB_HCA', 'nvidia_uvm', 'CUDA_VISIBLE_DEVICES',
                 'SupplementaryGroups'}
NAME_RE = re.compile(r'(?<![\w.\-/$])([A-Za-z]\w*_\w*[A-Za-z0-9]|[A-Z][a-z0-9]+[A-Z]\w*)'
                     r'(?![\w*(/.-])')


def check_names(tree, doc, no, segments, errors):
    for seg in segments:
        for m in NAME_RE.finditer(seg):
            n = m.group(1)
            if n in FOREIGN_NAMES or n.endswith('_'):
                continue
            SEEN['names'] += 1
            if n not in tree.words:
                errors.append('%s:%d: %s is not in the sources' % (doc, no, n))


MAN_SECTION_RE = re.compile(r'\b(?:see|section)\s+([A-Z]{3,}(?:\s[A-Z]{2,})*)\b')
ARCH_SECTION_RE = re.compile(r'(DESIGN\.md\S*\s+)?\bsections?\s+(\d+\.\d+)')


def check_sections(tree, doc, no, text, errors):
    """A man page section named after "see" or "section" (a line may end inside the name: a
    prefix of one is taken); an ARCHITECTURE sub-section number, unless DESIGN.md's."""
    for m in MAN_SECTION_RE.finditer(text):
        name = m.group(1)
        SEEN['sections'] += 1
        if not any(sec == name or (m.end(1) == len(text.rstrip(' ,.;:)')) and
                                   sec.startswith(name + ' ')) for sec in tree.man_sections):
            errors.append('%s:%d: no man page has a section %s' % (doc, no, name))
    for m in ARCH_SECTION_RE.finditer(text):
        if m.group(1) or not (doc.endswith('ARCHITECTURE.md') or 'ARCHITECTURE' in text):
            continue
        SEEN['sections'] += 1
        if m.group(2) not in tree.arch_sections:
            errors.append('%s:%d: docs/ARCHITECTURE.md has no section %s' % (doc, no, m.group(2)))


TOOL_RE = re.compile(r'(?:^|(?<=[\s/(`"\'=]))(llepd|llepctl|llep-bench|llep-plan|llep-demo)'
                     r'(?=\s|$)')


def invocations(seg):
    """(tool, the words after it) for each tool run in a code segment."""
    runs = []
    ms = list(TOOL_RE.finditer(seg))
    for i, m in enumerate(ms):
        end = ms[i + 1].start() if i + 1 < len(ms) else len(seg)
        rest = re.split(r'\s(?:\||;|&&|#)\s?|\)', seg[m.end():end] + ' ')[0]
        runs.append((m.group(1), rest.split()))
    return runs


def check_run(tree, doc, no, tool, words, errors):
    for w in words:
        om = re.match(r'--([a-z][\w-]*)', w)
        SEEN['options'] += 1 if om else 0
        if om and om.group(1) not in tree.options[tool]:
            errors.append('%s:%d: %s has no option --%s' % (doc, no, tool, om.group(1)))
    if tool == 'llepctl':
        i = 0
        while i < len(words) and re.match(r'-\w', words[i]):
            i += 2 if words[i] in ('--socket', '-s') else 1
        if i < len(words):
            verb = re.match(r"[a-z]*", words[i]).group(0)
            SEEN['verbs'] += 1 if verb and words[i][0].isalpha() else 0
            if verb and words[i][0].isalpha() and verb not in tree.verbs:
                errors.append('%s:%d: llepctl has no verb %s' % (doc, no, verb))
            if verb == 'set':
                for w in words[i + 1:]:
                    km = re.match(r'([a-z][\w-]*)=', w)
                    if km and km.group(1) not in tree.settings:
                        errors.append('%s:%d: llepctl set has no setting %s'
                                      % (doc, no, km.group(1)))


# Programs not of this tree: their options are not checked.
EXTERNAL_RE = re.compile(r'(?<![\w-])(pkg-config|systemctl|journalctl|cc|gcc|clang|meson|ninja|'
                         r'python3?|pip3?|git|curl|dpkg|apt|apt-get)(?=\s)')


def check_options_free(tree, doc, no, seg, tool, errors, near=''):
    """--options of a segment outside any tool run: the page's tool's, else anyone's. In a man
    page, an option of another tool named in the lines around (near) is that tool's."""
    stripped = TOOL_RE.split(seg)[0] if TOOL_RE.search(seg) else seg
    stripped = EXTERNAL_RE.split(stripped)[0]
    others = [t for t in TOOLS if re.search(r'(?<![\w-])%s\b' % t, near)]
    for om in re.finditer(r'(?<![\w-])--([a-z][\w-]*)', stripped):
        opt = om.group(1)
        SEEN['options'] += 1
        if tool and any(opt in tree.options[t] for t in others):
            continue
        if tool and opt not in tree.options[tool]:
            errors.append('%s:%d: %s has no option --%s' % (doc, no, tool, opt))
        elif not tool and opt not in tree.any_options:
            errors.append('%s:%d: no program has an option --%s' % (doc, no, opt))


KEY_EQ_RE = re.compile(r'^\s*([a-z][a-z0-9]*(?:[-_][a-z0-9]+)+|[a-z]+)\s+=\s+\S')


def check_key_mentions(tree, doc, no, line, segments, errors):
    keys = set(tree.config_keys)
    for seg in segments:
        m = KEY_EQ_RE.match(seg)
        SEEN['keys'] += 1 if m and '-' in m.group(1) else 0
        if m and '-' in m.group(1) and m.group(1) not in keys:
            errors.append('%s:%d: llepd has no config key %s' % (doc, no, m.group(1)))
    for m in re.finditer(r'(?:\bkey\s+`([^`]+)`|`([^`]+)`\s+key\b)', line):
        k = m.group(1) or m.group(2)
        SEEN['keys'] += 1 if re.fullmatch(r'[a-z][a-z0-9-]*', k) else 0
        if re.fullmatch(r'[a-z][a-z0-9-]*', k) and k not in keys:
            errors.append('%s:%d: llepd has no config key %s' % (doc, no, k))


def check_markdown(tree, doc, text, errors, paths_only=False):
    cont_tool = None
    for no, line, segs, fenced in md_lines(text):
        check_paths(tree, doc, no, line, errors)
        if paths_only:
            continue
        if not fenced:
            check_sections(tree, doc, no, line, errors)
            check_calls(tree, doc, no, segs, False, errors)
            check_names(tree, doc, no, segs, errors)
            check_key_mentions(tree, doc, no, line, segs, errors)
        for seg in segs:
            code = seg.split(' #')[0] if fenced else seg
            runs = invocations(code)
            if fenced and cont_tool and not runs:
                runs = [(cont_tool, code.split())]
            for tool, words in runs:
                check_run(tree, doc, no, tool, words, errors)
            if not runs:
                check_options_free(tree, doc, no, code, None, errors)
            cont_tool = runs[-1][0] if fenced and runs and line.rstrip().endswith('\\') \
                else None


def check_man(tree, doc, text, errors):
    page = doc.rsplit('/', 1)[-1]
    tool = PAGE_TOOL.get(page)
    conf_keys, opt_keys = [], []
    recent = ['', '', '']
    for no, line, bold, section in man_lines(text):
        recent = recent[1:] + [line]
        check_paths(tree, doc, no, line, errors)
        check_calls(tree, doc, no, [line], True, errors)
        check_sections(tree, doc, no, line, errors)
        check_names(tree, doc, no, bold, errors)
        check_key_mentions(tree, doc, no, '', bold, errors)
        runs = invocations(line)
        for t, words in runs:
            check_run(tree, doc, no, t, words, errors)
        check_options_free(tree, doc, no, line, tool, errors, ' '.join(recent))
        if page == 'llepd.conf.5.in' and section == 'KEYS':
            m = re.match(r'^\.B[IR]?\s+"?([a-z][\w\\-]*)', text.split('\n')[no - 1])
            if m and text.split('\n')[no - 2].startswith('.TP'):
                conf_keys.append((no, unescape(m.group(1))))
        if page == 'llepd.8.in' and section == 'OPTIONS':
            opt_keys += [(no, o) for o in re.findall(r'(?<![\w-])--([a-z][\w-]*)', line)]
        if page == 'llepd.8.in' and section == 'METRICS':
            for s in re.findall(r'\b(llep_[a-z0-9_]+)', line):
                SEEN['metrics'] += 1
                if s not in tree.metric_strings:
                    errors.append('%s:%d: metrics.c writes no series %s' % (doc, no, s))
    if tool and page != 'llepd.conf.5.in' and '\n.SH OPTIONS' in text:
        named = set(re.findall(r'(?<![\w-])--([a-z][\w-]*)', unescape(text)))
        for o in sorted(tree.options[tool] - named):
            SEEN['options'] += 1
            errors.append('%s:1: %s has an option --%s the page does not name' % (doc, tool, o))
    if page == 'llepd.conf.5.in':
        check_key_set(tree, doc, conf_keys, 'KEYS', errors)
    if page == 'llepd.8.in':
        check_key_set(tree, doc, opt_keys, 'OPTIONS', errors)
        named = set(re.findall(r'\b(llep_[a-z0-9_]+)', unescape(text)))
        for f in sorted(tree.metric_families - named):
            errors.append('%s:1: metrics.c writes series %s, METRICS does not name it'
                          % (doc, f))


def check_key_set(tree, doc, found, section, errors):
    keys = set(tree.config_keys)
    names = {k for _, k in found}
    SEEN['keys'] += len(found) + len(keys)
    for no, k in found:
        if k not in keys and k not in ('config', 'help', 'version'):
            errors.append('%s:%d: %s names %s, not in llep__config_keys' % (doc, no, section, k))
    for k in tree.config_keys:
        if k not in names:
            errors.append('%s:1: config key %s (daemon/core/config-keys.c) is not in %s'
                          % (doc, k, section))


def check_sample_config(tree, doc, text, errors):
    """packaging/llepd.conf shows every key once, commented out or set, and no other."""
    found = []
    for no, line in enumerate(text.split('\n'), 1):
        m = re.match(r'^#?([a-z][a-z0-9_-]*)\s*=', line)
        if m:
            found.append((no, m.group(1).replace('_', '-')))
    keys = set(tree.config_keys)
    SEEN['keys'] += len(found)
    for no, k in found:
        if k not in keys:
            errors.append('%s:%d: llepd has no config key %s' % (doc, no, k))
    for k in tree.config_keys:
        if k not in {k for _, k in found}:
            errors.append('%s:1: config key %s (daemon/core/config-keys.c) is not in the '
                          'sample' % (doc, k))


def documents(root):
    docs = [('docs/ARCHITECTURE.md', 'md'), ('README.md', 'md'),
            ('docs/PERFORMANCE.md', 'paths'), ('packaging/llepd.conf', 'conf')]
    docs += [(os.path.relpath(p, root).replace(os.sep, '/'), 'man')
             for p in sorted(glob.glob(os.path.join(root, 'packaging/man/*.in')))]
    return [(d, k) for d, k in docs if os.path.isfile(os.path.join(root, d))]


def check_text(tree, doc, text):
    errors = []
    if doc.endswith('.in'):
        check_man(tree, doc, text, errors)
    elif doc.endswith('.conf'):
        check_sample_config(tree, doc, text, errors)
    else:
        check_markdown(tree, doc, text, errors, paths_only=doc.endswith('PERFORMANCE.md'))
    return errors


def check(root):
    tree = Tree(root)
    errors = []
    for doc, _ in documents(root):
        errors += check_text(tree, doc, read(root, doc))
    return errors


# ---------------------------------------------------------------------------------------------
# Self-test: each sample is checked in a copy of the tree's tables; a good one must pass, a bad
# one must be reported with the expected words.

SAMPLES = [
    # (document, text, expected report or None for a good sample)
    ('docs/ARCHITECTURE.md', 'See `daemon/core/plan.c` and tests/ and scripts/*.sh.\n', None),
    ('docs/ARCHITECTURE.md', 'See `daemon/core/no-such-file.c`.\n',
     'no such path daemon/core/no-such-file.c'),
    ('docs/ARCHITECTURE.md', 'Both in server/space.c, plan-cost.c, /var/lib/x, $OUT/y.\n', None),
    ('docs/ARCHITECTURE.md', 'Plain gone.c here.\n', 'no file named gone.c'),
    ('docs/ARCHITECTURE.md', '`llep__plan_compute()` and `ops->sync()`.\n', None),
    ('docs/ARCHITECTURE.md', 'It calls `llep__no_such_function()`.\n',
     'llep__no_such_function() is not in the C sources'),
    ('docs/ARCHITECTURE.md', '`llep__engine_turn_begin/nope()`.\n',
     'llep__engine_turn_nope() is not in the C sources'),
    ('docs/ARCHITECTURE.md', '`devices_per_node = 0`, `LLEP_PB__` and `LLEPD_TEST_XNODE=1`\n',
     None),
    ('docs/ARCHITECTURE.md', 'the field `devices_per_nodes`\n',
     'devices_per_nodes is not in the sources'),
    ('docs/ARCHITECTURE.md', 'the message `ClusterPlanHashes`\n',
     'ClusterPlanHashes is not in the sources'),
    ('README.md', '(`man llepd`, section FAILED DEVICES); see CLUSTER\n', None),
    ('README.md', '(`man llepd`, section FAILING DEVICES)\n',
     'no man page has a section FAILING DEVICES'),
    ('docs/ARCHITECTURE.md', '# 3. A\n### 3.4 B\nas section 3.4 says, DESIGN.md section 4.9\n',
     None),
    ('docs/ARCHITECTURE.md', 'as section 3.9 says\n',
     'docs/ARCHITECTURE.md has no section 3.9'),
    ('packaging/llepd.conf', ('#alpha = 1.0\n', '#alpha_x = 1.0\n'),
     'llepd has no config key alpha-x'),
    ('packaging/llepd.conf', ('#alpha = 1.0\n', '# alpha, 1.0\n'),
     'config key alpha (daemon/core/config-keys.c) is not in the sample'),
    ('README.md', 'Set `replica-cache = off` or the `model` key.\n', None),
    ('README.md', 'Set `replica-caches = off`.\n', 'llepd has no config key replica-caches'),
    ('README.md', 'the `no-such` key of llepd.conf\n', 'llepd has no config key no-such'),
    ('README.md', 'Run `llepctl --json stats` and `llepctl tune --show`.\n', None),
    ('README.md', 'Run `llepctl frobnicate`.\n', 'llepctl has no verb frobnicate'),
    ('README.md', 'Run `llepctl set mixtral/3 min_tokens=64`.\n', None),
    ('README.md', 'Run `llepctl set gamma=2`.\n', 'llepctl set has no setting gamma'),
    ('README.md', '```\nbuild/tools/llep-bench --preset mixtral \\\n  --json\n```\n', None),
    ('README.md', '```\nbuild/tools/llep-bench --preset mixtral \\\n  --jsonx\n```\n',
     'llep-bench has no option --jsonx'),
    ('README.md', 'Start `llepd --no-such-option`.\n', 'llepd has no option --no-such-option'),
    ('README.md', 'Pass `--no-such-option-anywhere`.\n',
     'no program has an option --no-such-option-anywhere'),
    ('packaging/man/llepctl.1.in', '.SH EXAMPLES\n.nf\nllepctl tune \\-\\-show\n.fi\n', None),
    ('packaging/man/llepctl.1.in', '.SH EXAMPLES\n.B "llepctl frob"\n',
     'llepctl has no verb frob'),
    ('packaging/man/llep-plan.1.in', '.TP\n.BI \\-\\-bogus " N"\nWhat.\n',
     'llep-plan has no option --bogus'),
    ('packaging/man/llep-plan.1.in', ('.BR \\-\\-devices\\-per\\-node " \\fIN\\fP"\n',
                                       '.B x\n'),
     'llep-plan has an option --devices-per-node the page does not name'),
    ('packaging/man/llep-client.3.in', '.BR llep_connect ()\nsee llepd(8).\n', None),
    ('packaging/man/llep-client.3.in', '.BR llep_no_such ()\n',
     'llep_no_such() is not in the C sources'),
    ('packaging/man/llepd.conf.5.in', ('.TP\n.BI alpha " = X"\n',
                                        '.TP\n.BI alphas " = X"\n'),
     'KEYS names alphas, not in llep__config_keys'),
    ('packaging/man/llepd.conf.5.in', ('.TP\n.BI alpha " = X"\n', ''),
     'config key alpha (daemon/core/config-keys.c) is not in KEYS'),
    ('packaging/man/llepd.8.in', ('" llep_uptime_seconds\n', '" llep_uptime_secs\n'),
     'metrics.c writes no series llep_uptime_secs'),
    ('packaging/man/llepd.8.in', ('.BI \\-\\-lambda " X"\n', '.BI \\-\\-lambdas " X"\n'),
     'llepd has no option --lambdas'),
    ('packaging/man/llepd.8.in', ('" llep_uptime_seconds\n', '"\n'),
     'metrics.c writes series llep_uptime_seconds, METRICS does not name it'),
    ('packaging/man/llepd.8.in', ('.BI \\-\\-lambda " X"\n', '.BI \\-\\-lambda_x " X"\n'),
     'config key lambda (daemon/core/config-keys.c) is not in OPTIONS'),
    ('docs/PERFORMANCE.md', '```\nbuild-rel/tools/llep-bench --old-option\n```\n'
     'ninja -C build-rel tools/llep-bench; see tools/bench-decode.c\n', None),
    ('docs/PERFORMANCE.md', 'Run scripts/no-such-bench.sh.\n',
     'no such path scripts/no-such-bench.sh'),
]


def self_test(root):
    tree = Tree(root)
    failures = 0
    for doc, text, expect in SAMPLES:
        baseline = set()
        if isinstance(text, tuple):
            # A real page with one line changed: what the page breaks already is the baseline,
            # the change must add the expected report.
            original = read(root, doc)
            if text[0] not in original:
                print('self-test: %s lacks %r' % (doc, text[0]))
                failures += 1
                continue
            baseline = set(check_text(tree, doc, original))
            text = original.replace(text[0], text[1], 1)
        errs = [e for e in check_text(tree, doc, text) if e not in baseline]
        if expect is None:
            ok = not errs
        else:
            ok = any(expect in e and e.startswith(doc + ':') for e in errs)
        label = 'good' if expect is None else expect
        print('self-test: %-32s %-50s %s' % (doc, label[:50], 'ok' if ok else 'FAILED'))
        if not ok:
            failures += 1
            for e in errs:
                print('  got: ' + e)
    print('%d passed, %d failed' % (len(SAMPLES) - failures, failures))
    return 1 if failures else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--root', default=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    ap.add_argument('--self-test', action='store_true')
    a = ap.parse_args()
    if not os.path.isfile(os.path.join(a.root, 'daemon/core/config-keys.c')):
        print('check-docs: %s has no daemon/core/config-keys.c' % a.root, file=sys.stderr)
        return 2
    if a.self_test:
        return self_test(a.root)
    errors = check(a.root)
    for e in errors:
        print(e)
    print('check-docs: %d documents; references checked: %s; %d stale' % (
        len(documents(a.root)), ', '.join('%d %s' % (v, k) for k, v in SEEN.items()),
        len(errors)))
    return 1 if errors else 0


if __name__ == '__main__':
    sys.exit(main())
