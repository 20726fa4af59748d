//! The demo's gRPC: the `Orders` service the server pod's app serves next to
//! its HTTP API (`proto/demo.proto`), and the calls the client pod makes,
//! through both sidecars like every other call. Some calls fail with a
//! non-OK status, as real services' do: over HTTP that is still a 200, and
//! only the status in the response's trailers says what happened.

use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use tonic::{
    Request, Response, Status,
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};

#[allow(clippy::all, clippy::pedantic)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/apitrace.demo.v1.rs"));
}

pub use generated::orders_server::OrdersServer;
use generated::{
    GetOrderRequest, ListOrdersRequest, Order, orders_client::OrdersClient, orders_server,
};

/// The shop's orders: id and item.
const ORDERS: [(u32, &str); 3] = [(41, "coffee"), (42, "tea"), (43, "cake")];
/// The region whose store is down: listing it fails after the first orders.
const DOWN_REGION: &str = "eu";

/// The server side: answers from [`ORDERS`].
#[derive(Debug, Default, Clone, Copy)]
pub struct Shop;

type OrderStream = Pin<Box<dyn Stream<Item = Result<Order, Status>> + Send>>;

fn order((id, item): (u32, &str)) -> Order {
    Order {
        id,
        item: item.to_owned(),
    }
}

#[tonic::async_trait]
impl orders_server::Orders for Shop {
    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let id = request.into_inner().id;
        ORDERS
            .into_iter()
            .find(|(known, _)| *known == id)
            .map(|found| Response::new(order(found)))
            .ok_or_else(|| Status::not_found(format!("no order {id}")))
    }

    type ListOrdersStream = OrderStream;

    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<OrderStream>, Status> {
        let region = request.into_inner().region;
        let orders = futures::stream::iter(ORDERS.map(|found| Ok(order(found))));
        let stream: OrderStream = if region == DOWN_REGION {
            // Two orders, then the store goes away: the status comes in the
            // trailers, after messages, where no retry can hide it.
            Box::pin(orders.take(2).chain(futures::stream::once(async move {
                Err(Status::unavailable(format!("region {region} is down")))
            })))
        } else {
            Box::pin(orders)
        };
        Ok(Response::new(stream))
    }
}

/// Whether a request to the app is gRPC, by its content-type.
pub fn is_grpc<B>(request: &hyper::Request<B>) -> bool {
    request
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}

/// The calls the client makes, in turn: each method succeeding and failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    GetOrder(u32),
    ListOrders(&'static str),
}

pub const CALLS: [Call; 5] = [
    Call::GetOrder(42),
    Call::ListOrders("us"),
    Call::GetOrder(7),
    Call::ListOrders(DOWN_REGION),
    Call::GetOrder(41),
];

impl Call {
    /// What the shop answers it: a call through the mesh that comes back
    /// otherwise went wrong on the way (a sidecar's own UNAVAILABLE, a reset).
    pub fn expected(self) -> Outcome {
        let (code, orders) = match self {
            Self::GetOrder(id) if ORDERS.iter().any(|(known, _)| *known == id) => {
                (tonic::Code::Ok, 1)
            }
            Self::GetOrder(_) => (tonic::Code::NotFound, 0),
            Self::ListOrders(DOWN_REGION) => (tonic::Code::Unavailable, 2),
            Self::ListOrders(_) => (tonic::Code::Ok, ORDERS.len()),
        };
        Outcome { code, orders }
    }
}

/// What a call came back with: its status and how many orders it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub code: tonic::Code,
    pub orders: usize,
}

/// `message` as a request carrying the caller's credentials.
fn authorized<T>(authorization: &MetadataValue<Ascii>, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", authorization.clone());
    request
}

/// Makes `call` on `channel` with `authorization`. A non-OK status is an
/// outcome, not an error: the demo makes calls that fail on purpose.
pub async fn call(
    channel: Channel,
    call: Call,
    authorization: &str,
) -> Result<Outcome, tonic::metadata::errors::InvalidMetadataValue> {
    let value: MetadataValue<_> = authorization.parse()?;
    let mut client = OrdersClient::new(channel);
    let outcome = match call {
        Call::GetOrder(id) => match client
            .get_order(authorized(&value, GetOrderRequest { id }))
            .await
        {
            Ok(_) => Outcome {
                code: tonic::Code::Ok,
                orders: 1,
            },
            Err(status) => Outcome {
                code: status.code(),
                orders: 0,
            },
        },
        Call::ListOrders(region) => {
            let request = authorized(
                &value,
                ListOrdersRequest {
                    region: region.to_owned(),
                },
            );
            match client.list_orders(request).await {
                Ok(response) => {
                    let mut stream = response.into_inner();
                    let mut orders = 0;
                    let mut code = tonic::Code::Ok;
                    while let Some(item) = stream.next().await {
                        match item {
                            Ok(_) => orders += 1,
                            Err(status) => {
                                code = status.code();
                                break;
                            }
                        }
                    }
                    Outcome { code, orders }
                }
                Err(status) => Outcome {
                    code: status.code(),
                    orders: 0,
                },
            }
        }
    };
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use orders_server::Orders as _;

    #[tokio::test]
    async fn the_shop_fails_unknown_orders_and_the_down_region() {
        let missing = Shop
            .get_order(Request::new(GetOrderRequest { id: 7 }))
            .await;
        assert_eq!(missing.unwrap_err().code(), tonic::Code::NotFound);
        let found = Shop
            .get_order(Request::new(GetOrderRequest { id: 42 }))
            .await;
        assert_eq!(found.unwrap().into_inner().item, "tea");
        let list = |region: &str| {
            let request = Request::new(ListOrdersRequest {
                region: region.to_owned(),
            });
            async move {
                let stream = Shop.list_orders(request).await.unwrap().into_inner();
                stream
                    .map(|item| item.map_err(|status| status.code()))
                    .collect::<Vec<_>>()
                    .await
            }
        };
        assert_eq!(list("us").await.len(), 3);
        let down = list(DOWN_REGION).await;
        assert_eq!(down.len(), 3);
        assert_eq!(down[2], Err(tonic::Code::Unavailable));
        assert_eq!(Call::ListOrders(DOWN_REGION).expected().orders, 2);
        assert_eq!(Call::GetOrder(7).expected().code, tonic::Code::NotFound);
    }
}
