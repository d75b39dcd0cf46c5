#!/usr/bin/env node
// vmlet's command line.
import { runDemo } from "./demo";
import { NET_RUN_USAGE, netRun, parseNetRunArgs } from "./net-run";
import { parseServeArgs, SERVE_USAGE, serve } from "./serve";

const USAGE = `usage: vmlet <command>

commands:
  demo      run a VM pod through the CRI socket on a private demo node, and show it
  net run   set up pod networks from a CNI conf dir and serve them (see vmlet net run --help)
  serve     serve CRI to kubelet on a unix socket (see vmlet serve --help)
  version   print the version`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case "demo":
      return runDemo(rest);
    case "net":
      if (rest[0] !== "run") {
        console.error(NET_RUN_USAGE);
        return 2;
      }
      if (rest.includes("--help") || rest.includes("-h")) {
        console.log(NET_RUN_USAGE);
        return 0;
      }
      return netRun(parseNetRunArgs(rest.slice(1)));
    case "serve":
      if (rest.includes("--help") || rest.includes("-h")) {
        console.log(SERVE_USAGE);
        return 0;
      }
      return serve(parseServeArgs(rest));
    case "version":
      console.log(`vmlet ${require("../../../package.json").version}`);
      return 0;
    case undefined:
    case "-h":
    case "--help":
      console.log(USAGE);
      return command === undefined ? 2 : 0;
    default:
      console.error(`vmlet: unknown command ${JSON.stringify(command)}\n${USAGE}`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error: unknown) => {
    console.error(`vmlet: ${error instanceof Error ? error.message : String(error)}`);
    process.exit(1);
  },
);
