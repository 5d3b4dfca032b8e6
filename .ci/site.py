"""Build the book as a static website from the committed, executed notebooks (no cell is run), and check it in a browser.

    python .ci/site.py build [--out _site]     # nbconvert's lab template, one page per notebook, MathJax served locally
    python .ci/site.py check [--out _site]     # open every page in headless Chromium; fail on what a reader would see broken

`bash .ci/site` runs both. Why nbconvert: it is already a dev dependency, it renders exactly what the notebooks store
(code, outputs, `show_doc` blocks, figures) without executing anything, and one small template adds the book's
navigation. Sphinx + myst-nb or mkdocs-jupyter would add a toolchain for the same pages.
"""
import argparse, html.parser, json, os, re, shutil, subprocess, sys, urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'
TEMPLATE = Path(__file__).resolve().parent / 'site_template'
BOOK_NAME = 'pttfs: parallel training of TTFS SNNs'
# MathJax 2 is served from the site: Debian's libjs-mathjax, or the copy in the jupyter-server-mathjax wheel.
MATHJAX_CANDIDATES = [os.environ.get('MATHJAX_DIR', ''), '/usr/share/javascript/mathjax', '/usr/share/mathjax']
MATHJAX_CONFIGS = ['TeX-AMS_CHTML-full', 'TeX-AMS-MML_HTMLorMML-full']   # the first one the copy has (the wheel has only the second)
BROWSERS = ['chromium-headless-shell', 'chromium', 'chromium-browser', 'google-chrome']

BOOK_CSS = """
body.book { display: flex; margin: 0; }
nav.page-contents { margin: .5rem 0 1.5rem; padding: .6rem 1rem; border-left: 3px solid #ddd; font: 14px/1.5 sans-serif; }
nav.page-contents p { margin: 0 0 .3rem; font-weight: bold; } nav.page-contents ol { margin: 0; padding-left: 1.2rem; }
nav.page-contents li { list-style: none; } .book-number { color: #777; }
figure.book-figure { margin: 0.5rem 0 1rem; } figure.book-figure figcaption { font-size: 0.9rem; color: #444; max-width: 46rem; }
figure.book-figure figcaption b { color: #222; }
.jp-RenderedHTMLCommon pre, .jp-RenderedMarkdown pre { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace;
  font-size: 13px; background: #f6f6f6; border: 1px solid #e2e2e2; border-radius: 3px; padding: .5rem .7rem; }
.jp-RenderedHTMLCommon pre code, .jp-RenderedMarkdown pre code { font-family: inherit; background: none; }
details.book-fold > summary { cursor: pointer; color: #555; font: 13px sans-serif; margin: .3rem 0; }
.book-toc { position: sticky; top: 0; height: 100vh; overflow-y: auto; flex: 0 0 17rem; padding: 1rem;
            box-sizing: border-box; border-right: 1px solid #ddd; background: #fafafa; font: 14px/1.4 sans-serif; }
.book-toc ul { list-style: none; padding-left: 0; } .book-toc li { margin: .35rem 0; padding-left: 1.6rem; text-indent: -1.6rem; }
.book-toc .number { display: inline-block; width: 1.6rem; text-indent: 0; color: #777; }
.book-toc a { text-decoration: none; color: #1a4f8b; }
.book-toc li.current > a { font-weight: bold; color: #000; }
.book-name { font-weight: bold; font-size: 15px; }
.book-page { flex: 1 1 auto; min-width: 0; max-width: 70rem; padding: 0 1.5rem; }
/* A book has no input prompts, and no line cut at the right edge: long code lines wrap, outputs too. */
.jp-InputPrompt, .jp-OutputPrompt { display: none !important; }
.jp-InputArea-editor pre, .jp-OutputArea-output pre { white-space: pre-wrap !important; overflow-wrap: anywhere; }
.book-line { display: block; min-height: 1.2em; }   /* one code line; a wrapped line hangs under its indentation */
.book-pager { display: flex; justify-content: space-between; padding: .8rem 0; font: 14px sans-serif; }
@media (max-width: 60rem) { body.book { display: block; } .book-toc { position: static; height: auto; border: 0; } }
"""

# Marks, once the page has loaded and MathJax has finished, whether each image loaded, how many prompts show and how
# many code blocks are wider than their box: the check reads these from the DOM.
BOOK_JS = """
// A long code line wraps (nothing is cut at the right edge), and its continuation starts under the line's own
// indentation plus four columns, not at column 0: each line becomes a block with a hanging indent. Highlighting spans
// that cross a line end (a multi-line string) are split into one copy per line, so no text moves or changes.
function hangingIndents(pre) {
  var lines = [[]];
  var split = function (node, wrap) {
    if (node.nodeType === 3) {
      node.textContent.split('\\n').forEach(function (part, i) {
        if (i > 0) lines.push([]);
        if (part) lines[lines.length - 1].push(wrap(document.createTextNode(part)));
      });
    } else if (node.nodeType === 1) {
      Array.prototype.slice.call(node.childNodes).forEach(function (child) {
        split(child, function (inner) { var copy = node.cloneNode(false); copy.appendChild(inner); return wrap(copy); });
      });
    }
  };
  Array.prototype.slice.call(pre.childNodes).forEach(function (child) { split(child, function (n) { return n; }); });
  if (lines.length > 1 && lines[lines.length - 1].length === 0) lines.pop();       // the newline that ends the block
  pre.textContent = '';
  lines.forEach(function (nodes, i) {
    var line = document.createElement('span'); line.className = 'book-line';
    nodes.forEach(function (n) { line.appendChild(n); });
    var indent = line.textContent.match(/^ */)[0].length + 4;
    line.style.paddingLeft = indent + 'ch'; line.style.textIndent = (-indent) + 'ch';
    line.appendChild(document.createTextNode(i < lines.length - 1 ? '\\n' : ''));
    pre.appendChild(line);
  });
}
document.addEventListener('DOMContentLoaded', function () {
  document.querySelectorAll('.jp-InputArea-editor pre, .jp-RenderedMarkdown pre').forEach(hangingIndents);
  // A book, not an export: chapter N's title reads 'N. Title', its sections 'N.k Title', and a contents list of the
  // sections follows the title. The ids (the anchors other pages link to) are left as nbconvert made them.
  var chapter = document.body.getAttribute('data-chapter');
  var main = document.querySelector('main');
  if (!main) return;
  var prefix = function (heading, text) {
    var node = document.createElement('span'); node.className = 'book-number'; node.textContent = text + ' ';
    heading.insertBefore(node, heading.firstChild);
  };
  var h1 = main.querySelector('h1');
  var label = /^[0-9]+$/.test(chapter || '') ? String(Number(chapter)) : chapter;   // '07' -> '7'; appendices 'A', 'B', ...
  if (chapter && h1 && !/^Appendix/.test(h1.textContent.trim())) prefix(h1, label + '.');   // 'Appendix A: ...' says it
  var sections = Array.prototype.filter.call(main.querySelectorAll('h2'), function (h) { return h.id; });
  var entries = sections.map(function (h, k) {
    if (chapter) prefix(h, label + '.' + (k + 1));
    var copy = h.cloneNode(true);
    copy.querySelectorAll('.anchor-link').forEach(function (a) { a.remove(); });
    return '<li><a href="#' + encodeURIComponent(h.id).replace(/%25/g, '%') + '">' + copy.innerHTML + '</a></li>';
  });
  document.body.setAttribute('data-numbered', String(chapter && h1 ? sections.length + 1 : 0));
  // Every figure a chapter stores has a numbered caption (`#| fig-cap:` in its cell).
  var uncaptioned = Array.prototype.filter.call(main.querySelectorAll('.jp-OutputArea-output img'), function (img) {
    var figure = img.closest('figure.book-figure');
    var caption = figure && figure.querySelector('figcaption');
    return !(caption && /^Figure [0-9A-Z]+\\.[0-9]+: \\S/.test(caption.textContent));
  });
  document.body.setAttribute('data-uncaptioned', String(uncaptioned.length));
  document.body.setAttribute('data-figures', Array.prototype.map.call(main.querySelectorAll('figure.book-figure figcaption b'),
    function (b) { return b.textContent.replace(/^Figure /, '').replace(/:$/, ''); }).join(' '));
  if (entries.length > 1 && h1) {
    var toc = document.createElement('nav'); toc.className = 'page-contents';
    toc.innerHTML = '<p>Contents</p><ol>' + entries.join('') + '</ol>';
    var cell = h1.closest('.jp-Cell') || h1;
    cell.parentNode.insertBefore(toc, cell.nextSibling);
  }
  document.body.setAttribute('data-contents', document.querySelector('nav.page-contents') ? 'yes' : 'no');
});
window.addEventListener('load', function () {
  document.querySelectorAll('img').forEach(function (img) {
    img.setAttribute('data-loaded', img.complete && img.naturalWidth > 0 ? 'yes' : 'no');
  });
  // What a reader would see cut or out of place: visible input prompts, and code or output wider than its box.
  var visible = function (el) { return el.offsetParent !== null && el.textContent.trim() !== ''; };
  var prompts = Array.prototype.filter.call(document.querySelectorAll('.jp-InputPrompt, .jp-OutputPrompt'), visible);
  document.body.setAttribute('data-prompts', String(prompts.length));
  var cut = Array.prototype.filter.call(document.querySelectorAll('pre'), function (pre) {
    return visible(pre) && pre.scrollWidth > pre.clientWidth + 1;
  });
  document.body.setAttribute('data-cut-code', String(cut.length));
  var unhung = Array.prototype.filter.call(document.querySelectorAll('.jp-InputArea-editor pre, .jp-RenderedMarkdown pre'),
    function (pre) { return pre.textContent.trim() !== '' && !pre.querySelector('.book-line'); });
  document.body.setAttribute('data-unhung', String(unhung.length));
  if (cut.length) document.body.setAttribute('data-cut-example', cut[0].textContent.split('\\n')[0].slice(0, 80));
  // Plumbing a reader should not have to scroll past: show_doc calls and figure-drawing code, unless folded away.
  var unfolded = Array.prototype.filter.call(document.querySelectorAll('.jp-InputArea .jp-Editor'), function (code) {
    return visible(code) && !code.closest('details:not([open])') && /show_doc\\(|plt\\.subplots\\(|Figure\\(figsize/.test(code.textContent);
  });
  document.body.setAttribute('data-unfolded', String(unfolded.length));
  // Every code block a reader sees, Python, C++ or shell, in a monospace font inside a box (text outputs: monospace).
  var unboxed = Array.prototype.filter.call(document.querySelectorAll('main pre'), function (pre) {
    if (!visible(pre) || pre.closest('details:not([open])')) return false;
    var style = window.getComputedStyle(pre);
    if (!/mono|courier|consolas|menlo/i.test(style.fontFamily)) return true;
    if (!pre.closest('.jp-RenderedMarkdown, .jp-RenderedHTMLCommon') || pre.closest('.jp-RenderedText')) return false;
    return style.backgroundColor === 'rgba(0, 0, 0, 0)' && style.borderTopStyle === 'none';
  });
  document.body.setAttribute('data-unboxed-code', String(unboxed.length));
  var done = function () { document.body.setAttribute('data-mathjax', 'done'); };
  if (window.MathJax && window.MathJax.Hub) window.MathJax.Hub.Queue(done);
  else document.body.setAttribute('data-mathjax', 'missing');
});
"""


APPENDIX_FROM = 15      # notebooks numbered from here are appendices, lettered A, B, ... (CONTRIBUTING.md)


def book_number(file: str) -> str:
    "A page's number in the book: '7' for 07_fused.html, 'A' for 15_runs.html, '' for pages outside the chapters."
    if not file[0].isdigit(): return ''
    n = int(file.split('_')[0])
    return str(n) if n < APPENDIX_FROM else chr(ord('A') + n - APPENDIX_FROM)


def chapters():
    "The front page, the chapters in file-name order, then CONTRIBUTING.md: (source, page file name)."
    sources = [NBS / 'index.ipynb'] + sorted(p for p in NBS.glob('[0-9]*.ipynb')) + [ROOT / 'CONTRIBUTING.md']
    return [(source, source.with_suffix('.html').name) for source in sources]


FOLDED = r'^show_doc\(|plt\.subplots\(|Figure\(figsize'     # inputs a reader gets folded: show_doc calls, figure drawing


def directives(source: str) -> list:
    "nbdev's `#|` lines at the top of a code cell."
    out = []
    for line in source.splitlines():
        if not line.startswith('#|'): break
        out.append(line[2:].strip())
    return out


SOURCE_LINK = re.compile(r'^\[source\]\((?P<url>[^)]*/(?P<module>pttfs/\w+)\.py)#L\d+\)(\{[^}]*\})?\s*$', re.M)


GIT_URL = next((line.split('=', 1)[1].strip() for line in (ROOT / 'settings.ini').read_text().splitlines()
                if line.startswith('git_url')), 'https://github.com/')


def show_doc_markdown(text: str) -> str:
    """show_doc's block as the book shows it: a class reads `class Name(`, not `def Name(`; no [source] link (it points
    at settings.ini's git_url, which is not where this book's code is published: the definition is on the page, just
    above); no Quarto link attributes."""
    link = SOURCE_LINK.search(text)
    heading = re.search(r'^#+\s+(\w+)\s*$', text, re.M)
    if link and heading:
        import importlib, inspect
        try: defined = getattr(importlib.import_module(link.group('module').replace('/', '.')), heading.group(1), None)
        except ImportError: defined = None
        if inspect.isclass(defined): text = re.sub(rf'^def {heading.group(1)}\(', f'class {heading.group(1)}(', text, flags=re.M)
    text = SOURCE_LINK.sub('', text)
    return re.sub(r'\{target="_blank"[^}]*\}', '', text)


def page_notebook(path: Path):
    "The notebook as a reader sees it: nbdev's `#| hide` cells dropped, `#|` and `NBVAL` marks removed, links to .html."
    import nbformat
    if path.suffix == '.md':                                   # a markdown file becomes a one-cell notebook
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(path.read_text())])
    else: nb = nbformat.read(path, as_version=4)
    cells, figures, number = [], 0, book_number(path.with_suffix('.html').name)
    for cell in nb.cells:
        if cell.cell_type == 'code':
            flags = directives(cell.source)
            if 'hide' in flags or any(f.startswith('default_exp') for f in flags): continue
            lines = [l for l in cell.source.splitlines() if not l.startswith('#|') and not l.startswith('# NBVAL_')]
            cell.source = '\n'.join(lines).strip('\n')
            if 'code-fold: true' in flags or re.search(FOLDED, cell.source, re.M): cell.metadata['book_fold'] = True
            captions = [f.split(':', 1)[1].strip() for f in flags if f.startswith('fig-cap:')]   # one per image, in order
            images = [o for o in cell.outputs if 'image/png' in o.get('data', {})]
            for k, output in enumerate(images):
                figures += 1
                output.setdefault("metadata", {})["book_caption"] = [f"Figure {number}.{figures}",
                                                                    captions[min(k, len(captions) - 1)] if captions else '']
            if not cell.source and not cell.outputs: continue
            for output in cell.outputs:
                if 'text/markdown' in output.get('data', {}):
                    output['data']['text/markdown'] = show_doc_markdown(output['data']['text/markdown'])
        elif cell.cell_type == 'markdown':
            cell.source = re.sub(r'\]\((?:nbs/)?([\w-]+)\.(?:ipynb|md)(#[^)]*)?\)', r'](\1.html\2)', cell.source)
        cells.append(cell)
    nb.cells = cells
    return nb


def title_of(nb) -> str:
    for cell in nb.cells:
        if cell.cell_type == 'markdown':
            m = re.search(r'^#\s+(.+)$', cell.source, re.M)
            if m: return m.group(1).replace('`', '').strip()
    return ''


def find_mathjax() -> Path:
    for candidate in MATHJAX_CANDIDATES:
        if candidate and (Path(candidate) / 'MathJax.js').exists(): return Path(candidate)
    try:
        import jupyter_server_mathjax
        static = Path(jupyter_server_mathjax.__file__).parent / 'static'
        if (static / 'MathJax.js').exists(): return static
    except ImportError: pass
    sys.exit("MathJax 2 not found: `apt-get install libjs-mathjax` (Debian), `pip install jupyter-server-mathjax`, "
             "or set MATHJAX_DIR to a folder holding MathJax.js")


MANIFEST = '.site-manifest'   # every file a build wrote: the next build removes these and nothing else


def planned_mathjax(mathjax: Path) -> list:
    "The MathJax files the site serves, relative to `mathjax`."
    skip = shutil.ignore_patterns('unpacked', 'test', '*.md')
    files = []
    for folder, dirs, names in os.walk(mathjax):
        ignored = skip(folder, dirs + names)
        dirs[:] = [d for d in dirs if d not in ignored]
        files += [Path(folder, n).relative_to(mathjax) for n in names if n not in ignored]
    return sorted(files)


def write_file(out: Path, name: str, write):
    "Write out/name with `write(path)`, never through a link: one that is there is refused."
    path = out / name
    if path.is_symlink(): sys.exit(f"{path} is a link: the site writes no file through one; remove it")
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path)


def build(out: Path):
    from nbconvert import HTMLExporter
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        sys.exit(f"{out} is not a folder: choose another --out")
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).exists():   # never wipe a folder we did not build
        sys.exit(f"{out} exists and is not a site this script built: choose another --out, or remove it yourself")
    remove_previous_build(out)
    out.mkdir(parents=True, exist_ok=True)
    mathjax = find_mathjax()
    config = next(c for c in MATHJAX_CONFIGS + [''] if not c or (mathjax / 'config' / f'{c}.js').exists())
    if not config: sys.exit(f"{mathjax} has none of the MathJax configurations {MATHJAX_CONFIGS}")
    notebooks = [(page_notebook(nb), file) for nb, file in chapters()]
    served = [Path('mathjax') / f for f in planned_mathjax(mathjax)]
    # The manifest lists what this build will write, before it writes any of it: a build that fails partway leaves a
    # folder the next build recognises, and the next build removes these files and nothing a reader put there.
    planned = sorted({str(f) for f in served} | {'book.css', 'book.js'} | {file for _, file in notebooks})
    (out / MANIFEST).write_text('\n'.join(planned) + '\n')
    for f in served: write_file(out, str(f), lambda path, f=f: shutil.copyfile(mathjax / f.relative_to('mathjax'), path))
    write_file(out, 'book.css', lambda path: path.write_text(BOOK_CSS))
    write_file(out, 'book.js', lambda path: path.write_text(BOOK_JS))
    pages = [dict(file=file, title=title_of(nb) or file, number=book_number(file))
             for nb, file in notebooks]
    exporter = HTMLExporter(extra_template_basedirs=[str(TEMPLATE.parent)], template_name=TEMPLATE.name,
                            mathjax_url=f'mathjax/MathJax.js?config={config},Safe')
    for i, (nb, file) in enumerate(notebooks):
        nb.metadata['title'] = pages[i]['title']
        book = dict(name=BOOK_NAME, pages=pages, current=pages[i],
                    previous=pages[i - 1] if i > 0 else None, next=pages[i + 1] if i + 1 < len(pages) else None)
        body, _ = exporter.from_notebook_node(nb, resources=dict(book=book))
        body = body.replace('</head>', '<script src="book.js"></script>\n</head>', 1)
        write_file(out, file, lambda path: path.write_text(body, encoding='utf-8'))
    print(f"built {len(pages)} pages in {out}")


def remove_previous_build(out: Path):
    "Remove the files the last build listed in its manifest, and the folders of theirs it leaves empty; nothing else."
    manifest = out / MANIFEST
    if not manifest.exists(): return
    folders = set()
    for name in manifest.read_text().split('\n'):
        path = out / name
        if not name or not path.parent.resolve().is_relative_to(out.resolve()): continue
        if path.is_file() or path.is_symlink(): path.unlink()
        folders.update(p for p in path.parents if p != out and p.is_relative_to(out))
    manifest.unlink()
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):     # deepest first
        if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()): folder.rmdir()


class DOM(html.parser.HTMLParser):
    "What the check needs from a rendered page: title, ids, links, images, resources, and text outside math and code."
    SKIP_TEXT = {'script', 'style', 'pre', 'code', 'textarea', 'math', 'svg'}
    VOID = {'area', 'base', 'br', 'col', 'embed', 'hr', 'img', 'input', 'link', 'meta', 'source', 'track', 'wbr'}

    def __init__(self):
        super().__init__()
        self.title, self.ids, self.links, self.images, self.resources, self.text = '', set(), [], [], [], []
        self.stack, self.body = [], {}
        self.in_title = False

    def _skipping(self):
        return any(tag in self.SKIP_TEXT or 'MathJax' in cls or 'MJX' in cls for tag, cls in self.stack)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ('id', 'name'):
            if a.get(key): self.ids.add(a[key])
        if tag == 'a' and a.get('href'): self.links.append(a['href'])
        if tag == 'img': self.images.append(a)
        if tag in ('script', 'img', 'iframe') and a.get('src'): self.resources.append(a['src'])
        if tag == 'link' and a.get('href'): self.resources.append(a['href'])
        if tag == 'body': self.body = a
        if tag == 'title': self.in_title = True
        if tag not in self.VOID: self.stack.append((tag, a.get('class') or ''))

    def handle_endtag(self, tag):
        if tag == 'title': self.in_title = False
        for i in range(len(self.stack) - 1, -1, -1):          # tolerate unclosed tags
            if self.stack[i][0] == tag: del self.stack[i:]; break

    def handle_data(self, data):
        if self.in_title: self.title += data
        elif not self._skipping(): self.text.append(data)


RAW_TEX = re.compile(r'\$\$|\\\(|\\\)|\\\[|\\frac|\\begin\{|\\mathrm|\\sum|\\alpha|\$\\')


def find_browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path: return path
    sys.exit("no headless Chromium: `apt-get install chromium-headless-shell` (Debian) or chromium")


def rendered_dom(browser: str, page: Path) -> str:
    "The page's DOM after its scripts ran (MathJax included), as Chromium serialises it."
    cmd = [browser, '--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--allow-file-access-from-files',
           '--virtual-time-budget=30000', '--run-all-compositor-stages-before-draw', '--dump-dom', page.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if done.returncode != 0 or '<body' not in done.stdout:
        raise RuntimeError(f"{browser} failed on {page.name} (exit {done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def check(out: Path) -> int:
    browser = find_browser()
    expected = [file for _, file in chapters()]
    problems, doms = [], {}
    for file in expected:
        if not (out / file).exists(): problems.append(f"{file}: page missing"); continue
        dom = DOM(); dom.feed(rendered_dom(browser, out / file)); doms[file] = dom
    for file, dom in doms.items():
        say = lambda what: problems.append(f"{file}: {what}")
        if not dom.title.strip(): say("no <title>")
        if dom.body.get('data-mathjax') != 'done': say(f"MathJax did not finish (data-mathjax={dom.body.get('data-mathjax')!r})")
        text = ' '.join(dom.text)
        for m in list(RAW_TEX.finditer(text))[:5]:
            say(f"raw TeX left untypeset: …{text[max(0, m.start() - 40):m.end() + 40]!r}…")
        if '{target=' in text: say("Quarto link attributes left as text ('{target=...}')")
        for name in sorted(set(re.findall(r'\bdef ([A-Z]\w*)\(', text)))[:5]: say(f"class {name} shown as 'def {name}('")
        for href in dom.links:
            if href.startswith(GIT_URL): say(f"link into settings.ini's git_url, where no code is published: {href[:90]}")
        if dom.body.get('data-prompts') != '0': say(f"input or output prompts shown: {dom.body.get('data-prompts')!r}")
        if dom.body.get('data-unboxed-code') != '0': say(f"code not in a monospace box: {dom.body.get('data-unboxed-code')!r} blocks")
        if dom.body.get('data-unfolded') != '0': say(f"show_doc or figure-drawing code shown, not folded: {dom.body.get('data-unfolded')!r} cells")
        if dom.body.get('data-chapter') and dom.body.get('data-numbered') in (None, '0'): say("chapter and sections not numbered")
        if dom.body.get('data-chapter') and dom.body.get('data-contents') != 'yes': say("no contents list on the page")
        if dom.body.get('data-unhung') != '0': say(f"code whose wrapped lines would restart at column 0: {dom.body.get('data-unhung')!r} blocks")
        if dom.body.get('data-uncaptioned') != '0': say(f"figures without a numbered caption: {dom.body.get('data-uncaptioned')!r}")
        if dom.body.get('data-cut-code') != '0':
            say(f"code wider than its box (cut at the right edge): {dom.body.get('data-cut-code')!r} blocks, "
                f"the first starting {dom.body.get('data-cut-example', '')!r}")
        for img in dom.images:
            if img.get('data-loaded') != 'yes': say(f"image did not load: {img.get('src', '')[:80]!r}")
        for src in dom.resources:
            if re.match(r'(https?:)?//', src): say(f"needs the internet: {src}")
        for href in dom.links:
            parsed = urllib.parse.urlparse(href)
            if parsed.scheme in ('http', 'https', 'mailto'): continue
            target = urllib.parse.unquote(parsed.path) or file
            if target not in doms and not (out / target).exists(): say(f"link to a missing page: {href}"); continue
            fragment = parsed.fragment                      # nbconvert's heading ids keep the percent-encoding
            if fragment and target in doms and not {fragment, urllib.parse.unquote(fragment)} & doms[target].ids:
                say(f"link to a missing anchor: {href}")
    figures = {label for d in doms.values() for label in d.body.get('data-figures', '').split()}
    for file, dom in doms.items():                    # "Figure 13.3" in the prose names a figure that exists
        text = ' '.join(dom.text)
        for label in sorted(set(re.findall(r'Figure ((?:\d+|[A-Z])\.\d+)', text)) - figures):
            problems.append(f"{file}: refers to Figure {label}, which no page has")
    for p in problems: print('FAIL', p)
    maths = sum(1 for d in doms.values() if d.body.get('data-mathjax') == 'done')
    print(f"checked {len(doms)} of {len(expected)} pages in {Path(browser).name}: {maths} typeset by MathJax, "
          f"{sum(len(d.images) for d in doms.values())} images, {sum(len(d.links) for d in doms.values())} links; "
          f"{len(problems)} problems")
    return 1 if problems else 0


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('command', choices=['build', 'check'])
    parser.add_argument('--out', type=Path, default=ROOT / '_site')
    args = parser.parse_args()
    if args.command == 'build': build(args.out)
    else: sys.exit(check(args.out))
