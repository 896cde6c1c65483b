// Drives the published TypeScript direct client, @threefold/rmb_direct_client,
// against our relay: for each case (key type, mnemonic, session) it
// connects, pings the relay, sends one request to the destination twin and
// prints the answer as one JSON line. Twin lookups go to chain.js, a
// tfchain stand-in that answers from our registrar; the client is used
// exactly as published, configured only through its constructor.
//
// Input: the JSON in INTEROP_CONFIG:
//   {registrar, relay, destination, command, cases: [{keyType, mnemonic, session, payload}]}
// Output: one line per case, "RESULT " and then {"keyType", "session", "twin", "pong", "answer"}.
"use strict";

const { Client } = require("@threefold/rmb_direct_client");
const chain = require("./chain");

async function main() {
  const cfg = JSON.parse(process.env.INTEROP_CONFIG);
  const gw = await chain.start(cfg.registrar);
  const clients = [];
  for (const c of cfg.cases) {
    // Constructor: (chainUrl, relayUrl, mnemonics, session, keypairType, retries).
    const client = new Client(gw.url, cfg.relay, c.mnemonic, c.session, c.keyType, 5);
    clients.push(client);
    // connect gives the relay 10 s to open the socket; on a loaded
    // machine try again rather than fail.
    for (let attempt = 1; ; attempt++) {
      try {
        await client.connect();
        break;
      } catch (err) {
        if (attempt >= 3) throw err;
        console.error(`connect (${c.keyType}) attempt ${attempt} failed, retrying:`, err && err.message);
      }
    }
    const pingId = await client.ping();
    const pong = await client.read(pingId);
    const id = await client.send(cfg.command, JSON.stringify(c.payload), cfg.destination, 2);
    const answer = await client.read(id);
    process.stdout.write("RESULT " + JSON.stringify({ keyType: c.keyType, session: c.session, twin: client.twin.id, pong: !!pong, answer }) + "\n");
  }
  for (const client of clients) await client.disconnect();
  gw.close();
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error("interop client failed:", err && err.stack || err);
    process.exit(1);
  },
);
