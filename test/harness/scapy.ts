// Runs test/harness/dhcp6-scapy.py: scapy, an independent DHCPv6 and NDP implementation,
// builds client messages and decodes vmlet's replies.
import { execFileSync } from "node:child_process";
import path from "node:path";

const SCRIPT = path.join(__dirname, "../../../test/harness/dhcp6-scapy.py");
// Debian's python3 with python3-scapy; not the `python3` a PATH may put first.
const PYTHON = "/usr/bin/python3";

export function scapy(args: string[], input?: string): unknown {
  const out = execFileSync(PYTHON, [SCRIPT, ...args], {
    input,
    encoding: "utf8",
    stdio: ["pipe", "pipe", "inherit"],
  });
  return JSON.parse(out) as unknown;
}
