#!/usr/bin/env node
// Peer benchmark: the retry-kafka throughput-with-retries workload, run with
// kafkajs-async-retry 1.0.0 on kafkajs 2.2.4, so a Rust benchmark can compare against it
// in the same run, on the same broker.
//
// Workload: BENCH_EVENTS JSON order events on BENCH_TOPIC (created and filled by the caller,
// or by this script with BENCH_PRODUCE=1). Every event whose order_id % BENCH_FAIL_EVERY == 0
// fails on its first attempt only; the library publishes it to its retry topic with a
// BENCH_RETRY_DELAY_MS delay and it succeeds on that retry. One retry level, then the DLQ.
//
// Output: exactly one JSON line on stdout at the end; everything else (kafkajs logs,
// progress) goes to stderr. Exit 0 when settled, 1 on timeout or error.
//
// How the library works (read from node_modules/kafkajs-async-retry/dist/index.js), which
// shapes what is measured here:
//   * Retry topics are named after the consumer group: with the default ATTEMPT_BASED naming
//     one level is `${group}-retry-1`, and the DLQ is `${group}-dlq`. They are not created by
//     the library; this script creates them (same partition count as the main topic) before
//     the clock starts.
//   * A failed message is re-published (key, value, original headers + an `asyncRetry` JSON
//     header {ttl, top, att}) with one awaited producer.send() per message, from inside the
//     eachMessage call, so the main-topic offset only advances once the retry copy is acked.
//   * `retryDelays` is in seconds (ttl = now + delay * 1000). When a retry message is not yet
//     due and its wait is below `maxWaitTime` (default 3000 ms), the wrapper simply sleeps
//     (setTimeout) inside eachMessage; only longer waits use pause()/resume() of the
//     partition, and that path crashes the kafkajs 2.2.4 consumer (see maxWaitTime below),
//     so this script keeps every delay on the sleep path.
//   * kafkajs fetches once per broker, hands each partition's batch to a worker, and only
//     fetches again once every batch of that fetch is done: a retry batch sleeping until its
//     messages are due holds back the next main-topic fetch too.

'use strict'

const { performance } = require('perf_hooks')
const { Kafka, logLevel, Partitioners } = require('kafkajs')
const asyncRetry = require('kafkajs-async-retry')

const AsyncRetryHelper = asyncRetry.default
const { RetryTopicNaming, AsyncRetryEvent } = asyncRetry

const PEER = 'kafkajs-async-retry 1.0.0 / kafkajs 2.2.4'

// ---------------------------------------------------------------------------------------
// Configuration

function envInt(name, dflt, min = 0) {
  const raw = process.env[name]
  if (raw === undefined || raw === '') return dflt
  const value = Number(raw)
  if (!Number.isInteger(value) || value < min) {
    fail(`${name} must be an integer >= ${min}, got ${JSON.stringify(raw)}`)
  }
  return value
}

function fail(message) {
  process.stderr.write(`bench.js: ${message}\n`)
  process.exit(1)
}

function log(message) {
  process.stderr.write(`[peer ${new Date().toISOString()}] ${message}\n`)
}

const BROKERS = (process.env.KAFKA_BROKERS || '')
  .split(',')
  .map(s => s.trim())
  .filter(Boolean)
if (BROKERS.length === 0) fail('KAFKA_BROKERS is required (e.g. 127.0.0.1:9092)')
const TOPIC = process.env.BENCH_TOPIC
if (!TOPIC) fail('BENCH_TOPIC is required')
const EVENTS = envInt('BENCH_EVENTS', 200000, 1)
const GROUP = process.env.BENCH_GROUP || 'peer-kafkajs'
const FAIL_EVERY = envInt('BENCH_FAIL_EVERY', 10) // 0 disables failures
const RETRY_DELAY_MS = envInt('BENCH_RETRY_DELAY_MS', 1000)
const TIMEOUT_S = envInt('BENCH_TIMEOUT_S', 300, 1)
const PRODUCE = process.env.BENCH_PRODUCE === '1'
const PARTITIONS = envInt('BENCH_PARTITIONS', 4, 1) // only used with BENCH_PRODUCE=1
// See the AsyncRetryHelper construction below for why maxWaitTime follows the delay.
const MAX_WAIT_MS = Math.max(3000, RETRY_DELAY_MS + 1000)
// kafkajs sends no heartbeat while eachMessage sleeps: keep the session longer than a sleep.
const SESSION_TIMEOUT_MS = Math.max(30000, MAX_WAIT_MS + 10000)
const PROGRESS_MS = envInt('BENCH_PROGRESS_MS', 5000) // progress line on stderr; 0 = none

// kafkajs logs go to stderr only (its default logger uses console.info, i.e. stdout).
const stderrLogCreator = () => ({ namespace, label, log: entry }) => {
  const { message, timestamp, logger, ...extra } = entry
  const rest = Object.keys(extra).length ? ` ${JSON.stringify(extra)}` : ''
  process.stderr.write(`[kafkajs ${timestamp} ${label} ${namespace}] ${message}${rest}\n`)
}

const kafka = new Kafka({
  clientId: 'peer-kafkajs-async-retry',
  brokers: BROKERS,
  logLevel: logLevel.WARN,
  logCreator: stderrLogCreator,
})

// ---------------------------------------------------------------------------------------
// Timeout: armed at start; re-armed after the optional produce step so that producing the
// main topic (BENCH_PRODUCE=1) does not eat into the consumer's budget.

let timeoutHandle
let progress = () => ''
function armTimeout() {
  clearTimeout(timeoutHandle)
  timeoutHandle = setTimeout(() => {
    fail(`not settled after BENCH_TIMEOUT_S=${TIMEOUT_S}s: ${progress()}`)
  }, TIMEOUT_S * 1000)
}
armTimeout()

// ---------------------------------------------------------------------------------------
// Optional: create and fill the main topic (standalone testing only).

function eventFor(n) {
  return JSON.stringify({ order_id: n, amount_cents: 1000 + n, customer: `customer-${n % 1000}` })
}

async function produceMainTopic(admin) {
  if ((await admin.listTopics()).includes(TOPIC)) {
    log(`BENCH_PRODUCE=1: topic ${TOPIC} already exists; appending ${EVENTS} events`)
  } else {
    await admin.createTopics({
      topics: [{ topic: TOPIC, numPartitions: PARTITIONS, replicationFactor: 1 }],
      waitForLeaders: true,
    })
  }
  const producer = kafka.producer({
    createPartitioner: Partitioners.DefaultPartitioner, // Java-compatible murmur2 on the key
    allowAutoTopicCreation: false,
  })
  await producer.connect()
  const started = performance.now()
  const CHUNK = 5000
  const IN_FLIGHT = 4
  let next = 0
  const sendChunks = async () => {
    while (next < EVENTS) {
      const from = next
      const to = Math.min(EVENTS, from + CHUNK)
      next = to
      const messages = []
      for (let n = from; n < to; n++) messages.push({ key: String(n), value: eventFor(n) })
      await producer.send({ topic: TOPIC, messages })
    }
  }
  await Promise.all(Array.from({ length: IN_FLIGHT }, sendChunks))
  await producer.disconnect()
  log(`produced ${EVENTS} events to ${TOPIC} in ${((performance.now() - started) / 1000).toFixed(2)}s`)
}

// ---------------------------------------------------------------------------------------
// Measurement state

// Per order_id: bit 1 = first attempt concluded on the main topic, bit 2 = handled OK.
const FIRST_CONCLUDED = 1
const DONE = 2
const state = new Uint8Array(EVENTS)
let firstConcluded = 0 // distinct order_ids whose first attempt concluded
let handledOk = 0 // distinct order_ids handled successfully
let firstFailures = 0 // handler throws on a first attempt (previousAttempts == 0)
let retriedOk = 0 // distinct order_ids whose first success came on a retry attempt
let duplicates = 0 // successes for an order_id already done
let retryPublished = 0 // library RETRY events (message acked on the retry topic)
let deadLettered = 0 // library DEAD_LETTER events (should stay 0)
let foreign = 0 // messages whose order_id is outside 0..EVENTS-1 (should stay 0)

let runStart // performance.now() just before consumer.run()
let t0 // first message received on the main topic: the clock starts here
let drainAt
let settleAt
let settled
const settledPromise = new Promise(resolve => {
  settled = resolve
})

progress = () =>
  `first_concluded=${firstConcluded}/${EVENTS} handled_ok=${handledOk}/${EVENTS} ` +
  `first_failures=${firstFailures} retry_published=${retryPublished} retried_ok=${retriedOk} ` +
  `duplicates=${duplicates} dead_lettered=${deadLettered}`

function concludeFirst(orderId) {
  if (state[orderId] & FIRST_CONCLUDED) return
  state[orderId] |= FIRST_CONCLUDED
  firstConcluded++
  if (firstConcluded === EVENTS) drainAt = performance.now()
}

class InjectedFailure extends Error {}

// The application handler, as a user would write it for the library: it receives the
// payload extended with { isRetry, originalTopic, previousAttempts, processTime } and throws
// to hand the message to the library's retry topic.
async function handleOrder({ message, previousAttempts, isRetry }) {
  const order = JSON.parse(message.value.toString())
  const orderId = order.order_id
  if (!Number.isInteger(orderId) || orderId < 0 || orderId >= EVENTS) {
    foreign++
    return
  }
  if (previousAttempts === 0 && FAIL_EVERY > 0 && orderId % FAIL_EVERY === 0) {
    firstFailures++
    throw new InjectedFailure(`order ${orderId}: injected first-attempt failure`)
  }
  // success
  if (!isRetry) concludeFirst(orderId)
  if (state[orderId] & DONE) {
    duplicates++
    return
  }
  state[orderId] |= DONE
  handledOk++
  if (isRetry) retriedOk++
  if (handledOk === EVENTS) {
    settleAt = performance.now()
    settled()
  }
}

// ---------------------------------------------------------------------------------------

async function main() {
  const cpuBaseline = { user: 0, system: 0 }
  const admin = kafka.admin()
  await admin.connect()

  if (PRODUCE) {
    await produceMainTopic(admin)
    // Producing is setup, not part of the measured run: exclude its CPU and re-arm the timer.
    Object.assign(cpuBaseline, process.cpuUsage())
    armTimeout()
  }

  // The main topic must exist; its partition count sizes the retry/DLQ topics and the
  // consumer's concurrency.
  if (!(await admin.listTopics()).includes(TOPIC)) {
    fail(`BENCH_TOPIC ${TOPIC} does not exist (the caller creates and fills it; BENCH_PRODUCE=1 to do it here)`)
  }
  const metadata = await admin.fetchTopicMetadata({ topics: [TOPIC] })
  const mainPartitions = metadata.topics[0].partitions.length

  // One retry level with BENCH_RETRY_DELAY_MS, then the DLQ. The library takes delays in
  // seconds and computes ttl = now + delay * 1000, so fractional seconds are exact.
  // ATTEMPT_BASED (the default) names the level `${GROUP}-retry-1` whatever the delay
  // (DELAY_BASED would name it `${GROUP}-retry-1s`, and a sub-second delay would produce a
  // topic name its own subscription pattern does not match).
  const producer = kafka.producer({
    createPartitioner: Partitioners.DefaultPartitioner, // retries keep the event's key
    allowAutoTopicCreation: false,
  })
  await producer.connect()
  const helper = new AsyncRetryHelper({
    producer,
    groupId: GROUP,
    retryTopicNaming: RetryTopicNaming.ATTEMPT_BASED,
    retryDelays: [RETRY_DELAY_MS / 1000],
    maxRetries: 1,
    // maxWaitTime: a not-yet-due retry that is due within maxWaitTime is awaited with a
    // sleep inside eachMessage; a longer wait pauses the partition and throws an internal
    // KafkaJSNonRetriableError, which with kafkajs 2.2.4 crashes the consumer for good
    // (upstream issue shutterstock/kafkajs-async-retry#396). So: the library default
    // (3000 ms) for the default 1 s delay, and delay + 1 s for longer delays (the sleep path).
    maxWaitTime: MAX_WAIT_MS,
  })
  const retryTopics = helper.retryTopics // [`${GROUP}-retry-1`]
  const dlqTopic = helper.deadLetterTopic // `${GROUP}-dlq`

  // The library does not create its topics: the README says to create them up front.
  // Same partition count as the main topic (the library re-publishes with the event's key).
  // Only missing ones are created (kafkajs logs an ERROR for TOPIC_ALREADY_EXISTS).
  const existing = new Set(await admin.listTopics())
  const missing = [...retryTopics, dlqTopic].filter(topic => !existing.has(topic))
  if (missing.length > 0) {
    await admin.createTopics({
      topics: missing.map(topic => ({ topic, numPartitions: mainPartitions, replicationFactor: 1 })),
      waitForLeaders: true,
    })
  }
  const retryMeta = await admin.fetchTopicMetadata({ topics: retryTopics })
  const retryPartitions = retryMeta.topics.reduce((n, t) => n + t.partitions.length, 0)

  // A group that already has offsets would skip events: warn (the caller should use a fresh
  // group or a fresh broker per run).
  try {
    const committed = await admin.fetchOffsets({ groupId: GROUP, topics: [TOPIC, ...retryTopics] })
    const stale = committed.some(t => t.partitions.some(p => p.offset !== '-1'))
    if (stale) log(`warning: group ${GROUP} already has committed offsets; events may be skipped`)
  } catch (e) {
    log(`could not check committed offsets of ${GROUP}: ${e.message}`)
  }
  await admin.disconnect()

  helper.on(AsyncRetryEvent.RETRY, ({ message, details }) => {
    // Emitted after the retry copy was acked by the broker. A first-attempt failure is
    // concluded here: the library has handed it to the retry topic.
    retryPublished++
    if (details.previousAttempts === 0) {
      const orderId = Number(message.key.toString())
      if (orderId >= 0 && orderId < EVENTS) concludeFirst(orderId)
    }
  })
  helper.on(AsyncRetryEvent.DEAD_LETTER, () => {
    deadLettered++
  })

  // Consumer settings: kafkajs defaults (1 MiB per partition per fetch, sessionTimeout 30s,
  // heartbeatInterval 3s, autoCommit after each batch) except:
  //   * partitionsConsumedConcurrently = every partition this member consumes (main topic +
  //     retry topic), so each partition's batch gets its own worker and a retry partition
  //     sleeping until its messages are due does not hold up a main-topic partition's worker.
  //     (kafkajs still waits for all batches of one fetch before fetching again from that
  //     broker, so a sleeping retry batch does delay the next main-topic fetch.)
  //   * allowAutoTopicCreation: false (topics are created above).
  //   * sessionTimeout: the default 30 s, raised only for retry delays over ~19 s (see above).
  const concurrency = mainPartitions + retryPartitions
  const consumer = kafka.consumer({
    groupId: GROUP,
    allowAutoTopicCreation: false,
    sessionTimeout: SESSION_TIMEOUT_MS, // kafkajs default 30000 unless the delay needs more
  })
  consumer.on(consumer.events.CRASH, ({ payload }) => {
    const reason = payload.error && payload.error.message
    if (!payload.restart) fail(`consumer crashed without restart: ${reason}`)
    log(`consumer crashed, kafkajs restarts it: ${reason}`)
  })
  await consumer.connect()
  await consumer.subscribe({ topics: [TOPIC], fromBeginning: true })
  // The README's explicit form of the retry subscription (it also shows a RegExp form,
  // helper.retryTopicPattern, that matches every `${GROUP}-retry-N` topic).
  await consumer.subscribe({ topics: retryTopics, fromBeginning: true })

  const libraryEachMessage = helper.eachMessage(handleOrder)

  const progressTimer = setInterval(() => {
    if (t0 !== undefined) log(`t=${((performance.now() - t0) / 1000).toFixed(2)}s ${progress()}`)
  }, PROGRESS_MS || 2 ** 30)
  progressTimer.unref()

  runStart = performance.now()
  await consumer.run({
    partitionsConsumedConcurrently: concurrency,
    eachMessage: async payload => {
      // Measurement only: the clock starts at the first message received on the main topic.
      if (t0 === undefined && payload.topic === TOPIC) t0 = performance.now()
      return libraryEachMessage(payload)
    },
  })

  await settledPromise
  clearInterval(progressTimer)
  clearTimeout(timeoutHandle)
  const cpu = process.cpuUsage()

  // drain_s: every main-topic event's first attempt concluded, i.e. handled OK on the main
  // topic or (first-attempt failures) re-published to the retry topic and acked, as reported
  // by the library's RETRY event (fired after producer.send() resolved, still inside the
  // eachMessage call, i.e. just before kafkajs resolves that main-topic offset). So this is
  // the per-event conclusion itself rather than an offset-based proxy. drain_s <= settle_s
  // always: a failed event's retry success comes after its retry copy was published.
  const drainS = (drainAt - t0) / 1000
  const settleS = (settleAt - t0) / 1000
  const result = {
    peer: PEER,
    events: EVENTS,
    partitions: mainPartitions,
    concurrency,
    fail_every: FAIL_EVERY,
    retry_delay_ms: RETRY_DELAY_MS,
    max_wait_ms: MAX_WAIT_MS,
    join_ms: Math.round(t0 - runStart),
    drain_s: Number(drainS.toFixed(3)),
    settle_s: Number(settleS.toFixed(3)),
    drain_rate: Math.round(EVENTS / drainS),
    handled_ok: handledOk,
    first_failures: firstFailures,
    retried_ok: retriedOk,
    duplicates,
    dead_lettered: deadLettered,
    cpu_user_s: Number(((cpu.user - cpuBaseline.user) / 1e6).toFixed(3)),
    cpu_sys_s: Number(((cpu.system - cpuBaseline.system) / 1e6).toFixed(3)),
  }
  if (foreign > 0) result.foreign = foreign
  await new Promise(resolve => process.stdout.write(`${JSON.stringify(result)}\n`, resolve))

  // Clean shutdown; bounded so a stuck disconnect cannot hang the caller.
  const shutdown = Promise.all([consumer.disconnect(), producer.disconnect()])
  const guard = new Promise(resolve => setTimeout(() => resolve('timeout'), 30000).unref())
  if ((await Promise.race([shutdown.then(() => 'ok'), guard])) !== 'ok') {
    log('warning: disconnect did not finish within 30s; exiting anyway')
  }
  process.exit(0)
}

main().catch(e => fail(`error: ${e && e.stack ? e.stack : e}`))
