#!/usr/bin/env node
// vmlet's command line.
import { runDemo } from "./demo";

const USAGE = `usage: vmlet <command>

commands:
  demo      build a pod network in a private demo node namespace and show it
  version   print the version`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case "demo":
      return runDemo(rest);
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
