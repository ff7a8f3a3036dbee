#!/usr/bin/env python3
"""Checks the folder map of docs/ARCHITECTURE.md: who may include whom, and no include or call
circle between files.

    check-layout.py [--root DIR]     checks the tree at DIR (default: this script's repository)
    check-layout.py --self-test      plants a violation of each kind in a copy of the tree and
                                     checks that every one is found and named

Exit status 0 when the tree keeps every rule, 1 when it breaks one (each break is printed as
FILE: what is wrong), 2 for bad arguments.

The rules, by folder (a quoted include names a header of that folder; <...> are system
headers):
  daemon/core      core and include/llep only
  daemon/engine    core, engine, kernels/moe-cpu.h; no CUDA, libuv or protobuf
  daemon/model     core and model (checkpoints read with libc and json-c); no CUDA, libuv or
                   protobuf
  daemon/backends  core, engine, backends, kernels: the only folder with CUDA or NCCL headers
  daemon/server    core, engine, model, proto, server, backend selection
                   (backends/backend-select.h, backends/device-spec.h), kernels/moe-cpu.h;
                   never cluster
  daemon/cluster   core, engine, proto, server, cluster, backend selection, kernels/moe-cpu.h
  tools            core, engine, backends, model, proto, libclient, kernels/moe-cpu.h, tools;
                   never server or cluster
  libclient        core, proto, libclient
  proto            proto, include/llep and core's error buffers (daemon/core/errbuf.h)
Calls: a .c file may call a function of another .c file (a non-static function it defines)
only where no chain of such calls leads back to it; lower files call up through callbacks.
The call graph reads identifiers outside comments and strings, so a function pointer taken by
name counts as a call.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

FOLDERS = ['daemon/core', 'daemon/engine', 'daemon/model', 'daemon/backends',
           'daemon/server', 'daemon/cluster', 'kernels', 'proto', 'libclient', 'tools',
           'include/llep']
# Headers made at build time, and where they count as living.
GENERATED = {'llep.pb-c.h': 'proto', 'llep-config.h': 'config'}

ALLOWED = {
    'daemon/core': {'daemon/core', 'include/llep', 'config'},
    'daemon/engine': {'daemon/core', 'daemon/engine', 'include/llep', 'config',
                      'kernels/moe-cpu.h'},
    'daemon/model': {'daemon/core', 'daemon/model', 'include/llep', 'config'},
    'daemon/backends': {'daemon/core', 'daemon/engine', 'daemon/backends', 'include/llep',
                        'config', 'kernels'},
    'daemon/server': {'daemon/core', 'daemon/engine', 'daemon/model',
                      'daemon/backends/backend-select.h',
                      'daemon/backends/device-spec.h', 'proto', 'daemon/server',
                      'include/llep', 'config', 'kernels/moe-cpu.h'},
    'daemon/cluster': {'daemon/core', 'daemon/engine', 'proto', 'daemon/server',
                       'daemon/cluster', 'daemon/backends/backend-select.h',
                       'daemon/backends/device-spec.h', 'include/llep', 'config',
                       'kernels/moe-cpu.h'},
    'tools': {'daemon/core', 'daemon/engine', 'daemon/backends', 'daemon/model', 'proto',
              'libclient', 'kernels/moe-cpu.h', 'tools', 'include/llep', 'config'},
    'libclient': {'daemon/core', 'proto', 'libclient', 'include/llep', 'config'},
    'proto': {'proto', 'include/llep', 'config', 'daemon/core/errbuf.h'},
    'kernels': {'kernels', 'include/llep', 'config'},
    'include/llep': {'include/llep'},
}
SYSTEM_ONLY_IN = [
    (re.compile(r'^(cuda|cublas|cuda_runtime|nccl|curand|cusparse)'), {'daemon/backends',
                                                                      'kernels'},
     'CUDA or NCCL'),
    (re.compile(r'^uv\.h$'), {'daemon/server', 'daemon/cluster', 'daemon', 'libclient',
                              'tools'}, 'libuv'),
    (re.compile(r'^protobuf-c/'), {'proto', 'daemon/server', 'daemon/cluster', 'libclient',
                                   'tools', 'daemon'}, 'protobuf'),
]

INCLUDE_RE = re.compile(r'^\s*#\s*include\s*([<"])([^">]+)[">]', re.M)
DEF_RE = re.compile(r'^(?!static\b)(?!typedef\b)[A-Za-z_][\w \t\*]*?\b(\w+)\s*\([^;{}]*\)\s*\{',
                    re.M)
IDENT_RE = re.compile(r'\b[A-Za-z_]\w*\b')


def strip_code(text):
    """Comments, strings and character constants out; line count kept."""
    out, i, n = [], 0, len(text)
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
            while j < n and text[j] != c:
                j += 2 if text[j] == '\\' else 1
            out.append(c + c)
            i = j + 1
        else:
            out.append(c)
            i += 1
    return ''.join(out)


def folder_of(rel):
    best = ''
    for f in FOLDERS:
        if (rel == f or rel.startswith(f + '/')) and len(f) > len(best):
            best = f
    if not best and rel.startswith('daemon/') and rel.count('/') == 1:
        return 'daemon'
    return best


def scan(root):
    files = []
    for top in ['daemon', 'kernels', 'proto', 'libclient', 'tools', 'include']:
        for dirpath, _, names in os.walk(os.path.join(root, top)):
            for name in sorted(names):
                if name.endswith(('.c', '.h', '.cu')):
                    files.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(files)


def header_index(files):
    idx = {}
    for rel in files:
        if rel.endswith('.h'):
            idx.setdefault(os.path.basename(rel), []).append(rel)
            if rel.startswith('include/'):
                idx.setdefault(rel[len('include/'):], []).append(rel)
    return idx


def allowed(src_folder, target_rel, target_folder):
    if src_folder == 'daemon':  # daemon/llepd.c: main() wires everything
        return True
    rules = ALLOWED.get(src_folder)
    if rules is None:
        return True
    return target_folder in rules or target_rel in rules


def check_includes(root, files, errors):
    idx = header_index(files)
    graph = {}
    for rel in files:
        text = open(os.path.join(root, rel), errors='replace').read()
        src_folder = folder_of(rel)
        graph[rel] = []
        for kind, name in INCLUDE_RE.findall(text):
            if kind == '<':
                for pat, where, what in SYSTEM_ONLY_IN:
                    if pat.search(name) and src_folder not in where:
                        errors.append('%s: includes <%s>: %s headers belong in %s only'
                                      % (rel, name, what, ', '.join(sorted(where))))
                continue
            if name in GENERATED:
                target_folder, target = GENERATED[name], name
            else:
                here = os.path.normpath(os.path.join(os.path.dirname(rel), name))
                cands = [here] if here in files else idx.get(name, [])
                if not cands:
                    continue  # a test or build header outside the checked folders
                same = [c for c in cands if folder_of(c) == src_folder]
                target = (same or cands)[0]
                target_folder = folder_of(target)
                if target.endswith('.h'):
                    graph[rel].append(target)
            if not allowed(src_folder, target, target_folder):
                errors.append('%s: includes "%s" (%s), which %s may not include'
                              % (rel, name, target_folder or '?', src_folder))
    headers = {k: [t for t in v if t.endswith('.h')] for k, v in graph.items()
               if k.endswith('.h')}
    for cycle in cycles(headers):
        errors.append('%s: include circle: %s' % (cycle[0], ' -> '.join(cycle)))


def check_calls(root, files, errors):
    sources = [f for f in files if f.endswith('.c')]
    stripped = {f: strip_code(open(os.path.join(root, f), errors='replace').read())
                for f in sources}
    defs = {}
    for f in sources:
        for m in DEF_RE.finditer(stripped[f]):
            name = m.group(1)
            if name not in ('if', 'for', 'while', 'switch', 'return', 'sizeof', 'main'):
                defs.setdefault(name, f)
    graph = {}
    for f in sources:
        used = set(IDENT_RE.findall(stripped[f]))
        graph[f] = sorted({defs[n] for n in used if n in defs and defs[n] != f})
    for cycle in cycles(graph):
        names = []
        for a, b in zip(cycle, cycle[1:]):
            used = set(IDENT_RE.findall(stripped[a]))
            called = sorted(n for n in used if defs.get(n) == b)
            names.append('%s calls %s' % (a, ', '.join(called[:3])))
        errors.append('%s: call circle: %s' % (cycle[0], '; '.join(names)))


def cycles(graph):
    """One cycle per strongly connected component of more than one node (Tarjan)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(path_in(graph, sorted(comp)))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def path_in(graph, comp):
    """A closed walk start -> ... -> start inside the component, by breadth-first search."""
    start, members = comp[0], set(comp)
    prev, queue = {start: None}, [start]
    while queue:
        v = queue.pop(0)
        for w in graph.get(v, ()):
            if w == start:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return list(reversed(path)) + [start]
            if w in members and w not in prev:
                prev[w] = v
                queue.append(w)
    return comp + [comp[0]]


def check(root):
    files = scan(root)
    errors = []
    check_includes(root, files, errors)
    check_calls(root, files, errors)
    return files, errors


def self_test(root):
    """Each planted violation must be reported, naming the file it was planted in, beyond
    what the unplanted copy reports."""
    plants = [
        ('daemon/core/plan.c', '#include "engine.h"\n', 'includes "engine.h"'),
        ('daemon/engine/engine.c', '#include <uv.h>\n', 'includes <uv.h>'),
        ('daemon/model/model.c', '#include "engine.h"\n', 'includes "engine.h"'),
        ('daemon/server/scheduler.c', '#include "cluster-layer.h"\n',
         'includes "cluster-layer.h"'),
        ('tools/llep-bench.c', '#include "session.h"\n', 'includes "session.h"'),
        ('daemon/server/session.c',
         'void llepd__planted(void);\nvoid llepd__planted(void) { llepd_sub_complete(0, 0); }\n',
         'call circle'),
    ]
    failures = 0
    tmp = tempfile.mkdtemp(prefix='check-layout-')
    try:
        for top in ['daemon', 'kernels', 'proto', 'libclient', 'tools', 'include']:
            shutil.copytree(os.path.join(root, top), os.path.join(tmp, top))
        # What the tree breaks already is the baseline; each plant must add a report.
        _, baseline = check(tmp)
        baseline = set(baseline)
        for rel, text, expect in plants:
            path = os.path.join(tmp, rel)
            original = open(path).read()
            lines = original.split('\n')
            at = next(i for i, l in enumerate(lines) if l.startswith('#include')) \
                if text.startswith('#include') else len(lines)
            open(path, 'w').write('\n'.join(lines[:at]) + '\n' + text +
                                  '\n'.join(lines[at:]))
            _, errs = check(tmp)
            errs = [e for e in errs if e not in baseline]
            named = [e for e in errs if expect in e and rel in e]
            print('self-test: %-28s %-30s %s' % (rel, expect,
                                                 'found' if named else 'NOT FOUND'))
            if not named:
                failures += 1
                for e in errs:
                    print('  got: ' + e)
            open(path, 'w').write(original)
    finally:
        shutil.rmtree(tmp)
    print('%d passed, %d failed' % (len(plants) - failures, failures))
    return 1 if failures else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--root', default=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    ap.add_argument('--self-test', action='store_true')
    a = ap.parse_args()
    if not os.path.isdir(os.path.join(a.root, 'daemon')):
        print('check-layout: %s has no daemon/ folder' % a.root, file=sys.stderr)
        return 2
    if a.self_test:
        return self_test(a.root)
    files, errors = check(a.root)
    for e in errors:
        print(e)
    print('check-layout: %d files, %d rule%s broken' % (len(files), len(errors),
                                                        '' if len(errors) == 1 else 's'))
    return 1 if errors else 0


if __name__ == '__main__':
    sys.exit(main())
