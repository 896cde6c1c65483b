// Package redisapi is the local JSON API of rmb-peer (docs/protocol.md §9): the
// message types pushed to and popped from Redis lists, and a small client
// for programs that call other twins or serve commands through a peer.
//
//	client ──LPUSH──▶ msgbus.system.local ──▶ peer ──▶ relay ──▶ remote peer
//	client ◀─BRPOP── <ret>                ◀── peer ◀── relay ◀── remote peer
//
//	remote peer ──LPUSH──▶ msgbus.<cmd>        ──BRPOP──▶ service
//	remote peer ◀──BRPOP── msgbus.system.reply ◀─LPUSH─── service
//
// Payloads ("dat") are standard base64 with padding. Every queue is a FIFO
// when pushed with LPUSH and popped with BRPOP, which is what this client
// does; the peer accepts clients that push with RPUSH too.
package redisapi
