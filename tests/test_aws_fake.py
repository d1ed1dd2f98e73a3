"""The fake EC2 endpoint (tests/aws_fake.py), proved through real boto3 calls over HTTP.

Clients do not retry (total_max_attempts=1) unless a test says otherwise, so one boto3 call is one request and
call counts are exact. The last class pins moto behaviours the AWS provider relies on or must work around, so a
moto upgrade that changes them fails here first.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.aws_fake import SPOT_DISCOUNT, TEST_AMI_ID, FakeEC2, fake_ec2_fixture, on_demand_price

REGIONS = ("us-east-1", "us-west-2", "eu-west-1")

_server = pytest.fixture(scope="module")(fake_ec2_fixture)


@pytest.fixture
def fake(_server: FakeEC2) -> Iterator[FakeEC2]:
    _server.reset()
    yield _server


def launch(fake: FakeEC2, region: str = "us-east-1", zone: str | None = "us-east-1a", **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"ImageId": fake.ami(region), "MinCount": 1, "MaxCount": 1, "InstanceType": "g5.xlarge"}
    if zone:
        args["Placement"] = {"AvailabilityZone": zone}
    args.update(kw)
    return fake.client(region).run_instances(**args)["Instances"][0]  # type: ignore[no-any-return]


def error_of(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    response = excinfo.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def instances(fake: FakeEC2, region: str = "us-east-1", **kw: Any) -> list[dict[str, Any]]:
    reservations = fake.client(region).describe_instances(**kw)["Reservations"]
    return [i for r in reservations for i in r["Instances"]]


SPOT = {"MarketType": "spot", "SpotOptions": {"SpotInstanceType": "one-time"}}


class TestServer:
    def test_every_region_launches_with_its_ami_and_any_access_key(self, fake: FakeEC2) -> None:
        import boto3

        for region in REGIONS:
            zone = f"{region}a"
            assert launch(fake, region, zone)["Placement"]["AvailabilityZone"] == zone
            client = boto3.client(
                "ec2", region_name=region, endpoint_url=fake.endpoint_url,
                aws_access_key_id="AKIAANYTHING", aws_secret_access_key="whatever",
            )  # fmt: skip
            assert [
                i["Placement"]["AvailabilityZone"]
                for r in client.describe_instances()["Reservations"]
                for i in r["Instances"]
            ] == [zone]
            assert client.describe_images(ImageIds=[fake.ami(region)])["Images"][0]["ImageId"] == TEST_AMI_ID

    def test_a_second_server_starts_on_its_own_port_and_stops(self, _server: FakeEC2) -> None:
        with FakeEC2() as other:
            assert other.endpoint_url != _server.endpoint_url
            assert other.client().describe_availability_zones()["AvailabilityZones"]

    def test_reset_clears_everything(self, fake: FakeEC2) -> None:
        first = launch(fake, ClientToken="tok")
        fake.inject("InternalError", action="DescribeInstances", times=None)
        fake.exhaust("g5.xlarge", "us-east-1b")
        fake.set_spot_price("g5.xlarge", "us-east-1a", 9.0)
        fake.lose_next_answer()
        fake.reset()
        assert fake.calls == {} and fake.log == []
        assert instances(fake) == []  # also proves the DescribeInstances fault is gone
        again = launch(fake, ClientToken="tok")  # the token is forgotten and no answer is lost
        assert again["InstanceId"] != first["InstanceId"]
        assert launch(fake, zone="us-east-1b")["Placement"]["AvailabilityZone"] == "us-east-1b"
        assert fake.spot_price("g5.xlarge", "us-east-1a") != 9.0


class TestClientToken:
    def test_repeated_token_returns_the_same_instance(self, fake: FakeEC2) -> None:
        first = launch(fake, ClientToken="slot-1")
        second = launch(fake, ClientToken="slot-1")
        assert second["InstanceId"] == first["InstanceId"]
        assert [i["InstanceId"] for i in instances(fake)] == [first["InstanceId"]]
        assert launch(fake, ClientToken="slot-2")["InstanceId"] != first["InstanceId"]
        assert fake.count("RunInstances") == 3

    def test_concurrent_calls_with_one_token_make_one_instance(self, fake: FakeEC2) -> None:
        from concurrent.futures import ThreadPoolExecutor

        fake.ami("us-east-1")
        with ThreadPoolExecutor(8) as pool:
            ids = set(pool.map(lambda _: launch(fake, ClientToken="race")["InstanceId"], range(8)))
        assert len(ids) == 1 and len(instances(fake)) == 1

    def test_token_is_per_region(self, fake: FakeEC2) -> None:
        east = launch(fake, ClientToken="same")
        west = launch(fake, "us-west-2", "us-west-2a", ClientToken="same")
        assert east["InstanceId"] != west["InstanceId"]

    def test_changed_request_with_a_used_token_is_refused(self, fake: FakeEC2) -> None:
        launch(fake, ClientToken="slot-1")
        with pytest.raises(ClientError) as excinfo:
            launch(fake, zone="us-east-1b", ClientToken="slot-1")
        assert error_of(excinfo) == ("IdempotentParameterMismatch", 400)
        assert len(instances(fake)) == 1

    def test_a_failed_launch_does_not_use_up_the_token(self, fake: FakeEC2) -> None:
        fake.inject("InsufficientInstanceCapacity")
        with pytest.raises(ClientError):
            launch(fake, ClientToken="slot-1")
        assert launch(fake, ClientToken="slot-1")["InstanceId"]


class TestFaults:
    def test_injected_code_and_status_reach_botocore_once(self, fake: FakeEC2) -> None:
        fake.inject("InsufficientInstanceCapacity", status=500)
        with pytest.raises(ClientError) as excinfo:
            launch(fake)
        assert error_of(excinfo) == ("InsufficientInstanceCapacity", 500)
        assert "g5.xlarge capacity in the Availability Zone you requested (us-east-1a)" in str(excinfo.value)
        assert instances(fake) == []  # never reached moto
        assert launch(fake)["InstanceId"]  # times=1: the next call goes through
        assert fake.count("RunInstances") == 2

    def test_default_status_and_custom_message(self, fake: FakeEC2) -> None:
        fake.inject("VcpuLimitExceeded", message="You have requested more vCPU capacity than allowed.")
        with pytest.raises(ClientError) as excinfo:
            launch(fake)
        assert error_of(excinfo) == ("VcpuLimitExceeded", 400)
        assert excinfo.value.response["Error"]["Message"].startswith("You have requested")

    def test_matching_by_type_zone_market_and_region(self, fake: FakeEC2) -> None:
        fake.inject(
            "InsufficientInstanceCapacity",
            instance_type="p5.48xlarge",
            zone="us-east-1b",
            market="spot",
            times=None,
        )
        launch(fake, InstanceType="p5.48xlarge", zone="us-east-1b")  # on-demand: no match
        launch(fake, InstanceType="p5.48xlarge", zone="us-east-1c", InstanceMarketOptions=SPOT)  # other zone
        launch(fake, InstanceType="p4d.24xlarge", zone="us-east-1b", InstanceMarketOptions=SPOT)  # other type
        for _ in range(2):
            with pytest.raises(ClientError) as excinfo:
                launch(fake, InstanceType="p5.48xlarge", zone="us-east-1b", InstanceMarketOptions=SPOT)
            assert error_of(excinfo) == ("InsufficientInstanceCapacity", 500)
        fake.inject("Unsupported", region="us-west-2", times=1)
        launch(fake)  # us-east-1: no match
        with pytest.raises(ClientError):
            launch(fake, "us-west-2", "us-west-2a")

    def test_zone_is_read_from_the_subnet(self, fake: FakeEC2) -> None:
        client = fake.client()
        subnet = client.describe_subnets(Filters=[{"Name": "availability-zone", "Values": ["us-east-1c"]}])[
            "Subnets"
        ][0]
        fake.inject("InsufficientInstanceCapacity", zone="us-east-1c")
        with pytest.raises(ClientError) as excinfo:
            launch(fake, zone=None, SubnetId=subnet["SubnetId"])
        assert error_of(excinfo) == ("InsufficientInstanceCapacity", 500)

    def test_other_actions_can_fail(self, fake: FakeEC2) -> None:
        instance_id = launch(fake)["InstanceId"]
        fake.inject("UnauthorizedOperation", status=403, action="TerminateInstances")
        with pytest.raises(ClientError) as excinfo:
            fake.client().terminate_instances(InstanceIds=[instance_id])
        assert error_of(excinfo) == ("UnauthorizedOperation", 403)
        assert instances(fake)[0]["State"]["Name"] == "running"

    def test_exhaust_until_restore(self, fake: FakeEC2) -> None:
        fake.exhaust("p5.48xlarge", "us-east-1a")
        fake.exhaust("p5.48xlarge", "us-east-1b", market="spot")
        for _ in range(3):
            with pytest.raises(ClientError) as excinfo:
                launch(fake, InstanceType="p5.48xlarge")
            assert error_of(excinfo) == ("InsufficientInstanceCapacity", 500)
        launch(fake, InstanceType="p5.48xlarge", zone="us-east-1c")  # other zones still have capacity
        launch(fake, InstanceType="p5.48xlarge", zone="us-east-1b")  # only spot is exhausted there
        with pytest.raises(ClientError):
            launch(fake, InstanceType="p5.48xlarge", zone="us-east-1b", InstanceMarketOptions=SPOT)
        fake.restore("p5.48xlarge", "us-east-1a")
        launch(fake, InstanceType="p5.48xlarge")
        with pytest.raises(ClientError):  # restoring one pool leaves the other exhausted
            launch(fake, InstanceType="p5.48xlarge", zone="us-east-1b", InstanceMarketOptions=SPOT)
        fake.restore()
        launch(fake, InstanceType="p5.48xlarge", zone="us-east-1b", InstanceMarketOptions=SPOT)
        assert fake.count("RunInstances") == 9


class TestOfferings:
    @staticmethod
    def not_offered_pair(fake: FakeEC2) -> tuple[str, str, str, list[str]]:
        """(region, type, zone lacking it, zones offering it), found from moto's own offerings."""
        for region in REGIONS:
            client = fake.client(region)
            zones = {z["ZoneName"] for z in client.describe_availability_zones()["AvailabilityZones"]}
            for instance_type in ("p5.48xlarge", "p5en.48xlarge", "p4d.24xlarge", "g5.xlarge"):
                offered = client.describe_instance_type_offerings(
                    LocationType="availability-zone",
                    Filters=[{"Name": "instance-type", "Values": [instance_type]}],
                )["InstanceTypeOfferings"]
                have = sorted(o["Location"] for o in offered)
                if have and (missing := sorted(zones - set(have))):
                    return region, instance_type, missing[0], have
        raise AssertionError("moto offers every candidate type in every zone")

    def test_type_not_offered_in_zone_is_unsupported(self, fake: FakeEC2) -> None:
        region, instance_type, zone, have = self.not_offered_pair(fake)
        with pytest.raises(ClientError) as excinfo:
            launch(fake, region, zone, InstanceType=instance_type)
        assert error_of(excinfo) == ("Unsupported", 400)
        assert instances(fake, region) == []
        assert (
            launch(fake, region, have[0], InstanceType=instance_type)["Placement"]["AvailabilityZone"] == have[0]
        )

    def test_type_not_offered_in_region_and_unknown_type(self, fake: FakeEC2) -> None:
        client = fake.client("eu-west-1")
        offered = client.describe_instance_type_offerings(
            Filters=[{"Name": "instance-type", "Values": ["p5.48xlarge"]}]
        )
        if offered["InstanceTypeOfferings"]:
            pytest.skip("moto now offers p5.48xlarge in eu-west-1")
        with pytest.raises(ClientError) as excinfo:
            launch(fake, "eu-west-1", None, InstanceType="p5.48xlarge")
        assert error_of(excinfo) == ("Unsupported", 400)
        with pytest.raises(ClientError) as excinfo:
            launch(fake, InstanceType="p9.huge")
        assert error_of(excinfo) == ("InvalidParameterValue", 400)


class TestSpotPrices:
    def test_prices_are_current_linux_and_settable(self, fake: FakeEC2) -> None:
        fake.set_spot_price("p5.48xlarge", "us-east-1a", 12.5)
        history = fake.client().describe_spot_price_history(InstanceTypes=["p5.48xlarge"])["SpotPriceHistory"]
        by_zone = {h["AvailabilityZone"]: h for h in history}
        assert float(by_zone["us-east-1a"]["SpotPrice"]) == 12.5
        base = on_demand_price("p5.48xlarge")
        for zone, entry in by_zone.items():
            assert entry["InstanceType"] == "p5.48xlarge" and entry["ProductDescription"] == "Linux/UNIX"
            assert datetime.now(UTC) - entry["Timestamp"] < timedelta(minutes=1)
            if zone != "us-east-1a":
                assert 0.3 * base < float(entry["SpotPrice"]) < 0.5 * base
                assert float(entry["SpotPrice"]) == fake.spot_price("p5.48xlarge", zone)
        assert float(by_zone["us-east-1b"]["SpotPrice"]) == pytest.approx(SPOT_DISCOUNT * base * 1.04)

    def test_filters_by_zone_and_product(self, fake: FakeEC2) -> None:
        client = fake.client("us-west-2")
        history = client.describe_spot_price_history(
            InstanceTypes=["g5.xlarge", "p4d.24xlarge"],
            Filters=[{"Name": "availability-zone", "Values": ["us-west-2b"]}],
        )["SpotPriceHistory"]
        assert sorted((h["InstanceType"], h["AvailabilityZone"]) for h in history) == [
            ("g5.xlarge", "us-west-2b"), ("p4d.24xlarge", "us-west-2b"),
        ]  # fmt: skip
        windows = client.describe_spot_price_history(InstanceTypes=["g5.xlarge"], ProductDescriptions=["Windows"])
        assert windows["SpotPriceHistory"] == []

    def test_paginated_with_next_token(self, fake: FakeEC2) -> None:
        client = fake.client()
        first = client.describe_spot_price_history(InstanceTypes=["g5.xlarge", "p5.48xlarge"], MaxResults=5)
        assert len(first["SpotPriceHistory"]) == 5 and first["NextToken"]
        pages = list(
            client.get_paginator("describe_spot_price_history").paginate(
                InstanceTypes=["g5.xlarge", "p5.48xlarge"], PaginationConfig={"PageSize": 5}
            )
        )
        rows = [(h["InstanceType"], h["AvailabilityZone"]) for p in pages for h in p["SpotPriceHistory"]]
        assert len(pages) >= 3 and len(rows) == len(set(rows)) == 11  # g5: 5 zones, p5: 6 zones in us-east-1
        assert fake.count("DescribeSpotPriceHistory") == 1 + len(pages)


class TestInterruption:
    def test_interrupted_spot_instance_is_terminated_with_the_spot_reason(self, fake: FakeEC2) -> None:
        instance = launch(
            fake,
            InstanceMarketOptions=SPOT,
            TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "pool", "Value": "a"}]}],
        )
        assert instance["InstanceLifecycle"] == "spot"
        fake.interrupt(instance["InstanceId"])
        [seen] = instances(fake, Filters=[{"Name": "tag:pool", "Values": ["a"]}])
        assert seen["State"] == {"Code": 48, "Name": "terminated"}
        assert seen["StateReason"] == {
            "Code": "Server.SpotInstanceTermination",
            "Message": "Server.SpotInstanceTermination: Spot instance termination",
        }
        found = instances(
            fake, Filters=[{"Name": "state-reason-code", "Values": ["Server.SpotInstanceTermination"]}]
        )
        assert [i["InstanceId"] for i in found] == [instance["InstanceId"]]

    def test_shutting_down_then_terminated(self, fake: FakeEC2) -> None:
        instance_id = launch(fake, InstanceMarketOptions=SPOT)["InstanceId"]
        fake.interrupt(instance_id, final_state="shutting-down")
        [seen] = instances(fake)
        assert seen["State"]["Name"] == "shutting-down"
        assert seen["StateReason"]["Code"] == "Server.SpotInstanceTermination"
        fake.interrupt(instance_id)
        assert instances(fake)[0]["State"]["Name"] == "terminated"

    def test_on_demand_instances_are_not_interrupted(self, fake: FakeEC2) -> None:
        with pytest.raises(ValueError, match="not a spot instance"):
            fake.interrupt(launch(fake)["InstanceId"])


class TestLostAnswer:
    def test_instance_is_created_but_the_client_sees_503(self, fake: FakeEC2) -> None:
        fake.lose_next_answer()
        with pytest.raises(ClientError) as excinfo:
            launch(fake, ClientToken="slot-1")
        assert error_of(excinfo) == ("ServiceUnavailable", 503)
        [created] = instances(fake)
        assert created["State"]["Name"] == "running"
        # Retrying with the same token finds the instance EC2 made, not a second one.
        assert launch(fake, ClientToken="slot-1")["InstanceId"] == created["InstanceId"]
        assert len(instances(fake)) == 1

    def test_botocore_retry_reuses_its_own_token(self, fake: FakeEC2) -> None:
        fake.lose_next_answer()
        client = fake.client(retries={"total_max_attempts": 3, "mode": "standard"})
        reply = client.run_instances(
            ImageId=fake.ami("us-east-1"), MinCount=1, MaxCount=1, InstanceType="g5.xlarge"
        )
        assert reply["ResponseMetadata"]["RetryAttempts"] == 1
        assert [i["InstanceId"] for i in instances(fake)] == [reply["Instances"][0]["InstanceId"]]
        assert fake.count("RunInstances") == 2


class TestCallCounts:
    def test_counted_per_action_and_region_including_rejections(self, fake: FakeEC2) -> None:
        fake.exhaust("g5.xlarge", "us-west-2a")
        launch(fake)
        launch(fake)
        with pytest.raises(ClientError):
            launch(fake, "us-west-2", "us-west-2a")
        fake.client("eu-west-1").describe_instances()
        assert fake.calls == {
            ("RunInstances", "us-east-1"): 2, ("RunInstances", "us-west-2"): 1, ("DescribeInstances", "eu-west-1"): 1,
        }  # fmt: skip
        assert fake.count("RunInstances") == 3
        assert fake.count("RunInstances", "us-west-2") == 1
        assert fake.count("TerminateInstances") == 0
        assert [c.params["Placement.AvailabilityZone"] for c in fake.log if c.action == "RunInstances"] == [
            "us-east-1a", "us-east-1a", "us-west-2a",
        ]  # fmt: skip


class TestMotoBehaviour:
    """What moto does that the provider must cope with (not what EC2 does in every case)."""

    def test_terminated_instances_stay_listed_with_a_user_reason(self, fake: FakeEC2) -> None:
        instance = launch(fake)
        assert instance["State"]["Name"] == "pending"  # RunInstances answers pending ...
        assert instances(fake)[0]["State"]["Name"] == "running"  # ... and describe says running at once
        assert instances(fake)[0]["StateReason"] == {"Code": "", "Message": ""}  # empty, not absent
        fake.client().terminate_instances(InstanceIds=[instance["InstanceId"]])
        [seen] = instances(fake)
        assert seen["State"]["Name"] == "terminated"
        assert seen["StateReason"]["Code"] == "Client.UserInitiatedShutdown"
        assert seen["StateTransitionReason"].startswith("User initiated (")

    def test_spot_lifecycle_and_no_spot_request(self, fake: FakeEC2) -> None:
        spot = launch(fake, InstanceMarketOptions=SPOT)
        on_demand = launch(fake)
        assert spot["InstanceLifecycle"] == "spot" and "SpotInstanceRequestId" not in spot
        assert "InstanceLifecycle" not in on_demand
        assert fake.client().describe_spot_instance_requests()["SpotInstanceRequests"] == []

    @pytest.mark.parametrize("name", ["instance-lifecycle", "client-token", "instance-state-code", "launch-time"])
    def test_unimplemented_filters_answer_a_non_xml_500(self, fake: FakeEC2, name: str) -> None:
        from botocore.parsers import ResponseParserError

        launch(fake)
        with pytest.raises(ResponseParserError):
            fake.client().describe_instances(Filters=[{"Name": name, "Values": ["x"]}])

    def test_tag_and_state_filters_and_pagination_work(self, fake: FakeEC2) -> None:
        tags = [{"ResourceType": "instance", "Tags": [{"Key": "pool", "Value": "a"}]}]
        for _ in range(6):
            launch(fake, TagSpecifications=tags)
        launch(fake)
        client = fake.client()
        assert len(instances(fake, Filters=[{"Name": "tag:pool", "Values": ["a"]}])) == 6
        assert len(instances(fake, Filters=[{"Name": "tag-key", "Values": ["pool"]}])) == 6
        assert len(instances(fake, Filters=[{"Name": "instance-state-name", "Values": ["running"]}])) == 7
        pages = list(client.get_paginator("describe_instances").paginate(PaginationConfig={"PageSize": 5}))
        assert [len(p["Reservations"]) for p in pages] == [5, 2]  # pages count reservations, not instances
