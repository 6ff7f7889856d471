// Parses an AsyncAPI document with @asyncapi/parser and prints every diagnostic.
// Exits 1 when the parser reports an error (or produces no document); warnings are allowed.
//
//   node .ci/asyncapi/validate.mjs <dir holding node_modules/@asyncapi/parser> <document>
//
// .ci/asyncapi-check installs the parser pinned by this directory's package-lock.json into
// .ci-tools/asyncapi and runs this script with that directory.
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const [toolsDir, documentPath] = process.argv.slice(2);
if (!toolsDir || !documentPath) {
  console.error('usage: node validate.mjs <tools dir> <asyncapi document>');
  process.exit(2);
}

// The parser lives outside this directory, so resolve it from the tools directory.
const require = createRequire(path.resolve(toolsDir, 'package.json'));
const { Parser, DiagnosticSeverity } = require('@asyncapi/parser');

const source = path.resolve(documentPath);
const text = await readFile(source, 'utf8');
const { document, diagnostics } = await new Parser().parse(text, {
  source: pathToFileURL(source).href,
});

const names = {
  [DiagnosticSeverity.Error]: 'error',
  [DiagnosticSeverity.Warning]: 'warning',
  [DiagnosticSeverity.Information]: 'info',
  [DiagnosticSeverity.Hint]: 'hint',
};
const counts = { error: 0, warning: 0, info: 0, hint: 0 };
for (const diagnostic of diagnostics) {
  const severity = names[diagnostic.severity] ?? 'error';
  counts[severity] += 1;
  const where = diagnostic.path.length ? diagnostic.path.join('.') : '(document)';
  const line = diagnostic.range ? `:${diagnostic.range.start.line + 1}` : '';
  console.log(`${severity}  ${documentPath}${line}  ${where}  [${diagnostic.code}] ${diagnostic.message}`);
}

const failed = counts.error > 0 || document === undefined;
const version = document ? document.version() : 'unparsed';
console.log(
  `${failed ? 'invalid' : 'valid'}: AsyncAPI ${version}, ` +
    `${counts.error} error(s), ${counts.warning} warning(s), ${counts.info + counts.hint} info`,
);
process.exit(failed ? 1 : 0);
