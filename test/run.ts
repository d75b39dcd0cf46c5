// The test runner: re-enters itself in a private namespace, then runs every test file
// (unit/, netns/, guest/) with Node's test runner. Arguments narrow the run to files whose
// path contains one of them; VMLET_TEST_NAME=REGEX runs only the tests whose name matches
// (node --test-name-pattern). `npm run test:unit` runs unit/ alone, without root.
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { enterPrivateNamespace } from "../src/sys/private-namespace";
import { Rtnl } from "../src/sys/rtnl";

async function main(): Promise<void> {
  enterPrivateNamespace();
  const lo = Rtnl.open("/proc/self/ns/net");
  await lo.setUp("lo");
  lo.close();

  const root = __dirname;
  const filters = process.argv.slice(2);
  const files = findTests(root).filter(
    (f) => filters.length === 0 || filters.some((x) => f.includes(x)),
  );
  if (files.length === 0) throw new Error(`no test files match ${filters.join(" ")}`);
  const byName = process.env.VMLET_TEST_NAME;
  const result = spawnSync(
    process.execPath,
    [
      "--test",
      "--test-reporter=spec",
      "--test-concurrency=1",
      "--test-timeout=300000",
      ...(byName ? [`--test-name-pattern=${byName}`] : []),
      ...files,
    ],
    { stdio: "inherit" },
  );
  process.exit(result.status ?? 1);
}

function findTests(dir: string): string[] {
  const out: string[] = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...findTests(full));
    else if (entry.name.endsWith(".test.js")) out.push(full);
  }
  return out.sort();
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
